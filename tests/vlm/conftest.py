"""Fixtures of the VLM tests: synthetic scene codes, a tiny vocabulary and a tiny model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from vlm_fixtures import C, Data, K, make_data

from selftok.vlm.model import build_lm
from selftok.vlm.params import VLMParams
from selftok.vlm.vocab import VLMTokenizer


@pytest.fixture(scope="package", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and far faster than two when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data() -> Data:
    return make_data(96)


@pytest.fixture(scope="session")
def tokenizer(data: Data) -> VLMTokenizer:
    return VLMTokenizer.build(data.captions, C, K, text_vocab_size=320)


@pytest.fixture(scope="session")
def tiny() -> VLMParams:
    return VLMParams(size="tiny", batch_size=16, warmup_steps=2, log_every=1, checkpoint_every=3, eval_every=1000)


@pytest.fixture
def lm(tokenizer: VLMTokenizer, tiny: VLMParams) -> torch.nn.Module:
    return build_lm(tiny, tokenizer, seed=0).eval()
