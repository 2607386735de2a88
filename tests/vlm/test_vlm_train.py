from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vlm_fixtures import Data

from selftok.training.loop import Callbacks, make_accelerator
from selftok.vlm.model import build_lm
from selftok.vlm.params import VLMParams
from selftok.vlm.train import evaluate_loss, train_vlm
from selftok.vlm.vocab import VLMTokenizer


def test_a_tiny_training_lowers_the_loss(tokenizer: VLMTokenizer, tiny: VLMParams, data: Data, tmp_path: Path) -> None:
    params = tiny.model_copy(update={"steps": 40, "lr": 3e-3, "checkpoint_every": 1000})
    lm = build_lm(params, tokenizer, seed=0)
    captions = tokenizer.encode_text(data.captions)
    before = evaluate_loss(lm, tokenizer, captions, data.codes, params, seed=0)
    result, task = train_vlm(lm, tokenizer, captions, data.codes, params, 0, tmp_path / "ckpt", accelerator=make_accelerator())
    after = evaluate_loss(lm, tokenizer, captions, data.codes, params, seed=0)
    assert after["loss"] < 0.6 * before["loss"]
    assert after["loss_visual"] < before["loss_visual"] and after["loss_text"] < before["loss_text"]
    assert {"loss_visual", "loss_text", "loss_t2i", "loss_i2t"} <= set(result.history[-1])
    assert task.tokens_seen > 0


class Interrupted(Exception):
    pass


def test_resume_after_interruption_matches_an_uninterrupted_run(tokenizer: VLMTokenizer, tiny: VLMParams, data: Data, tmp_path: Path) -> None:
    params = tiny.model_copy(update={"steps": 6, "checkpoint_every": 3, "eval_every": 3})
    captions = tokenizer.encode_text(data.captions)

    def train(folder: Path, callbacks: Callbacks | None = None) -> torch.nn.Module:
        lm = build_lm(params, tokenizer, seed=0)
        train_vlm(lm, tokenizer, captions, data.codes, params, 0, folder, callbacks, make_accelerator())
        return lm

    straight = train(tmp_path / "straight")

    def kill(step: int) -> None:
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tmp_path / "resumed", Callbacks(on_eval=kill))
    assert (tmp_path / "resumed" / "step_0000003" / "state.json").is_file()
    resumed = train(tmp_path / "resumed")
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
