"""Persisted checkpoint folders resume only the run whose inputs made them (stages.base.guard_checkpoints)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from selftok.stages.base import INPUTS_RECORD, StageSpec, await_checkpoint_guard, guard_checkpoints, read_spec, resume_fingerprint
from selftok.training.history import HISTORY, history_logger

ROOT = Path(__file__).resolve().parents[2]
SPEC = StageSpec(name="rl_finetune@selftok", params=[], deps=[], outs=["models/vlm_rl", "checkpoints/rl"], persisted=["checkpoints/rl", "data/codes"])
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


def test_a_worker_rank_waits_for_rank_0_to_settle_the_checkpoints(tmp_path: Path) -> None:
    guard_checkpoints(tmp_path, SPEC, RUN_A)
    _checkpoint(tmp_path)  # an interrupted run A; run B is launched on 2 processes
    seen: list[list[str]] = []

    def worker() -> None:
        await_checkpoint_guard(tmp_path, SPEC, RUN_B, timeout=30)
        seen.append(sorted(p.name for p in (tmp_path / "checkpoints/rl").iterdir()))

    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive() and not seen  # rank 0 has not run its guard yet
    guard_checkpoints(tmp_path, SPEC, RUN_B)
    thread.join(timeout=10)
    assert seen == [[INPUTS_RECORD]]  # the worker never saw run A's step_000010


def test_a_worker_rank_resumes_at_once_when_inputs_are_unchanged_and_times_out_clearly(tmp_path: Path) -> None:
    guard_checkpoints(tmp_path, SPEC, RUN_A)
    await_checkpoint_guard(tmp_path, SPEC, RUN_A, timeout=0)
    with pytest.raises(TimeoutError, match=r"rl_finetune@selftok: rank 0 did not record checkpoints/rl/inputs.json"):
        await_checkpoint_guard(tmp_path, SPEC, RUN_B, timeout=0.3)


def test_history_is_rewritten_on_the_tracking_rank_only(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints/tokenizer"
    (checkpoints / "step_000010").mkdir(parents=True)
    rows = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (5, 10, 15))  # 15: logged after the last checkpoint
    (checkpoints / HISTORY).write_text(rows)
    history_logger(checkpoints, lambda step, logs: None, trim=False)
    assert (checkpoints / HISTORY).read_text() == rows
    history_logger(checkpoints, lambda step, logs: None, trim=True)
    assert [json.loads(line)["step"] for line in (checkpoints / HISTORY).read_text().splitlines()] == [5, 10]
