"""Helpers for the fault suite: params edits, stage processes to kill, metrics to compare."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from selftok.stages.base import read_spec

# Keys that time a run or say where it resumed: they differ between an interrupted and a whole run.
TIMING = ("seconds", "steps_per_s", "resumed_from", "stage_seconds", "it_per_s")


def set_param(project: Path, key: str, value: Any) -> None:
    """Set a dotted params key in the clone's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    node = params
    *parents, last = key.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def clear_checkpoints(project: Path, stage: str) -> list[Path]:
    """Delete the stage's persisted checkpoint folders (the full run's), so that it trains from step 0."""
    folders = [project / out for out in read_spec(project, stage).persisted if out.startswith("checkpoints/")]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return folders


def start(command: list[str], project: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A process in its own group (so a kill reaches its children), output captured."""
    return subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})


def stage_command(stage: str) -> list[str]:
    return [sys.executable, "-m", "selftok", "stage", stage, "--root", "."]


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 300.0) -> None:
    """Until ``path`` exists; fails if the process ends first (the fault would land nowhere)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out = process.stdout.read() if process.stdout else ""
            pytest.fail(f"process ended (exit {process.returncode}) before {path} appeared:\n{out[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{path} did not appear within {timeout:.0f}s")
        time.sleep(0.005)


def run_stage(project: Path, stage: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(stage_command(stage), cwd=project, capture_output=True, text=True, env={**os.environ, **(env or {})})


def comparable(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics file without its timing keys, flattened."""
    from selftok.nested import flatten

    return {k: v for k, v in flatten(metrics).items() if k.rpartition(".")[2] not in TIMING}


def metrics(project: Path, stage: str) -> dict[str, Any]:
    return json.loads((project / read_spec(project, stage).metrics_file).read_text())
