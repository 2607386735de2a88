"""Fixtures for the tokenizer tests: tiny models over a tiny VAE, so the folder runs in well under two minutes on 2 cores."""

from __future__ import annotations

import pytest
import torch
from tokenizer_helpers import tiny_config as tiny_config_keywords

from selftok.tokenizer.arch import TokenizerConfig

torch.set_num_threads(1)


@pytest.fixture
def tiny_config() -> TokenizerConfig:
    return TokenizerConfig(**tiny_config_keywords())
