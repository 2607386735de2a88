"""Kills and stop signals during real training stages of the smoke profile.

Each case clones the session's smoke run, removes the stage's finished checkpoints and sets its
checkpoint interval to one step (a logging-only key: the resume fingerprint and the numbers are
unchanged), so the uninterrupted run to compare with is the smoke run's own metrics file. The step
that the fault lands after is drawn from a generator seeded with the stage's name.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.faults.kit import clear_checkpoints, comparable, metrics, run_stage, set_param, stage_command, start, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# (stage, params section, steps of its smoke run)
TRAINING = [("train_vae", "vae", 6), ("train_tokenizer", "tokenizer", 6), ("pretrain_vlm@selftok", "vlm", 30)]


def kill_step(stage: str, steps: int) -> int:
    """The (seeded) step whose checkpoint triggers the fault, in the first third of the run: a smoke
    step takes a few tens of milliseconds, so a later one could finish the run before the kill lands."""
    return random.Random(stage).randint(1, steps // 3)


@pytest.mark.parametrize(("stage", "section", "steps"), TRAINING, ids=[t[0] for t in TRAINING])
def test_sigkill_resumes_from_the_last_checkpoint_with_the_same_metrics(clone: Path, smoke_run, stage: str, section: str,
                                                                        steps: int) -> None:
    whole = comparable(metrics(smoke_run[0], stage))
    set_param(clone, f"{section}.checkpoint_every", 1)
    (folder,) = clear_checkpoints(clone, stage)
    step = kill_step(stage, steps)
    process = start(stage_command(stage), clone)
    wait_for(folder / f"step_{step:07d}" / "state.json", process)
    os.killpg(process.pid, signal.SIGKILL)  # no handler runs: the process and its children vanish
    process.wait()
    assert not (clone / "metrics" / f"{stage}.json").exists()  # a killed stage shows no numbers

    rerun = run_stage(clone, stage)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    found = re.search(r"resuming from \S+ \(step (\d+)\)", rerun.stdout + rerun.stderr)
    assert found, (rerun.stdout + rerun.stderr)[-3000:]
    assert step <= int(found.group(1)) < steps  # at most one checkpoint interval (one step here) redone
    assert comparable(metrics(clone, stage)) == whole


def test_sigterm_stops_selftok_run_promptly_and_the_stage_resumes(clone: Path, smoke_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM to `selftok run`'s process group (what stopping `make run` sends): the training stage
    saves a checkpoint and exits, the command exits within seconds with a clear message, and a
    rerun resumes from the checkpoint and ends with the uninterrupted run's numbers.

    `selftok run` starts its own temporary Prefect server here, as `make run` does: that server is
    in the same process group, so the signal stops it too, and Prefect used to retry reporting
    the crash to it for minutes."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    stage = "train_vae"
    set_param(clone, "vae.checkpoint_every", 1)
    (folder,) = clear_checkpoints(clone, stage)
    command = [sys.executable, "-m", "selftok", "run", "--root", ".", "--stage", stage, "--force"]
    process = start(command, clone)
    wait_for(folder / "step_0000002" / "state.json", process)
    os.killpg(process.pid, signal.SIGTERM)
    sent = time.monotonic()
    try:
        out, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("selftok run did not exit within 60 s of SIGTERM")
    assert time.monotonic() - sent < 45, "selftok run took too long to stop"
    assert process.returncode != 0
    assert "SIGTERM received" in out, out[-3000:]  # the stage's message (checkpoint saved) and the flow's
    saved = sorted(p.name for p in folder.glob("step_*") if (p / "state.json").is_file())
    assert saved and int(saved[-1].removeprefix("step_")) >= 2
    assert not (clone / "metrics" / f"{stage}.json").exists()

    rerun = run_stage(clone, stage)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    resumed = metrics(clone, stage)
    assert resumed["train"]["resumed_from"] >= 2
    assert comparable(resumed) == comparable(metrics(smoke_run[0], stage))
