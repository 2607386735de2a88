"""Persisted checkpoint folders resume only the run whose inputs made them (stages.base.guard_checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path

from selftok.stages.base import INPUTS_RECORD, StageSpec, guard_checkpoints, read_spec, resume_fingerprint

ROOT = Path(__file__).resolve().parents[2]
SPEC = StageSpec("rl_finetune@selftok", [], [], ["models/vlm_rl", "checkpoints/rl"], persisted=["checkpoints/rl", "data/codes"])
RUN_A = {"params": "aaa", "inputs": {"models/vlm": "111"}}
RUN_B = {"params": "aaa", "inputs": {"models/vlm": "222"}}  # a new pretrained model upstream


def _checkpoint(root: Path) -> Path:
    step = root / "checkpoints/rl/step_000010"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"weights")
    return step


def test_same_inputs_resume_and_new_inputs_start_fresh(tmp_path: Path) -> None:
    guard_checkpoints(tmp_path, SPEC, RUN_A)
    step = _checkpoint(tmp_path)
    guard_checkpoints(tmp_path, SPEC, RUN_A)  # an interrupted run rerun with the same inputs
    assert step.is_dir()
    guard_checkpoints(tmp_path, SPEC, RUN_B)
    folder = tmp_path / "checkpoints/rl"
    assert [p.name for p in folder.iterdir()] == [INPUTS_RECORD]
    assert json.loads((folder / INPUTS_RECORD).read_text()) == RUN_B
    assert (tmp_path / "checkpoints/rl.stale/step_000010/model.safetensors").read_bytes() == b"weights"  # moved, not lost


def test_unrecorded_checkpoints_are_set_aside_and_other_persisted_outs_untouched(tmp_path: Path) -> None:
    _checkpoint(tmp_path)  # made before inputs were recorded
    codes = tmp_path / "data/codes/train"
    codes.mkdir(parents=True)  # tokenize keeps its own per-shard receipts
    guard_checkpoints(tmp_path, SPEC, RUN_A)
    assert (tmp_path / "checkpoints/rl.stale/step_000010").is_dir()
    assert codes.is_dir() and not (tmp_path / "data/codes" / INPUTS_RECORD).exists()


def test_read_spec_lists_the_persisted_outs() -> None:
    assert read_spec(ROOT, "rl_finetune@spatial").persisted == ["checkpoints/rl_spatial"]
    assert read_spec(ROOT, "tokenize@selftok").persisted == ["data/codes"]


def test_fingerprint_ignores_evaluation_knobs_but_not_training_ones() -> None:
    base = {"vlm": {"lr": 1e-3, "eval": {"sample_prompts": 8}, "log_every": 25}, "vlm.sampling": {"cfg_scale": 3.0}}
    same = resume_fingerprint(base, {"data/codes": "1"})
    assert resume_fingerprint({**base, "vlm": {**base["vlm"], "eval": {"sample_prompts": 2}, "log_every": 5}}, {"data/codes": "1"}) == same
    assert resume_fingerprint({**base, "vlm": {**base["vlm"], "lr": 2e-3}}, {"data/codes": "1"}) != same
    # a declared top-level key is a training input (RL samples with vlm.sampling)
    assert resume_fingerprint({**base, "vlm.sampling": {"cfg_scale": 1.0}}, {"data/codes": "1"}) != same
    assert resume_fingerprint(base, {"data/codes": "2"}) != same
