"""`selftok status` while a pipeline runs: the stage, since when, how far; otherwise DVC status as before."""

from __future__ import annotations

import os
import time
from pathlib import Path

from typer.testing import CliRunner

from selftok.cli import app
from selftok.commands.status import running
from selftok.progress import PIPELINE_STATUS, STAGE_STATUS, write_status


def test_running_names_the_pipeline_stage_and_loop(tmp_path: Path) -> None:
    now = time.time()
    assert running(tmp_path, now) == []
    write_status(tmp_path / PIPELINE_STATUS, {"pid": os.getpid(), "started": now - 600, "stages": ["ingest", "train_vae", "evaluate"],
                                              "finished": ["ingest"], "stage": "train_vae", "index": 2, "stage_started": now - 125})
    write_status(tmp_path / STAGE_STATUS, {"pid": os.getpid(), "stage": "train_vae", "stage_started": now - 120, "loop": "train",
                                           "done": 500, "total": 2000, "rate": 5.0, "loop_started": now - 100, "updated": now - 3})
    lines = running(tmp_path, now)
    assert lines[0].startswith("pipeline running since ") and lines[0].endswith("(10m00s ago): 1 of 3 stages done")
    assert lines[1].startswith("stage train_vae (2/3) since ") and "(2m05s ago)" in lines[1]
    assert lines[2] == "train: 500/2000 (25%), 5 it/s, about 5m00s left (as of 3s ago)"
    (tmp_path / PIPELINE_STATUS).unlink()  # a stage run by `dvc repro` alone
    assert running(tmp_path, now)[0].startswith("stage train_vae running since ")


def test_status_reads_the_status_files_while_running_and_dvc_otherwise(project: Path) -> None:
    idle = CliRunner().invoke(app, ["status", "--root", str(project)])
    assert idle.exit_code == 0, idle.output
    assert "DVC status" in idle.output and "running" not in idle.output
    write_status(project / STAGE_STATUS, {"pid": os.getpid(), "stage": "ingest", "stage_started": time.time(), "loop": "ingest train (scenes)",
                                          "done": 40, "total": 160, "rate": 80.0, "loop_started": time.time(), "updated": time.time()})
    busy = CliRunner().invoke(app, ["status", "--root", str(project)])
    assert busy.exit_code == 0, busy.output
    assert "DVC status" not in busy.output and "stage ingest running since" in busy.output
    assert "ingest train (scenes): 40/160 (25%)" in busy.output and "registry" in busy.output
