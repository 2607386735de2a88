"""The flow's console and status file: each stage line relayed once, the running stage on record."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flows import pipeline as flow
from selftok.progress import PIPELINE_STATUS, read_status

CHILD = r"""
import sys, time
for i in range(200):
    sys.stderr.write(f"\rtrain: {i + 1}/200")  # a bar redrawn in place, as a library would draw it in a pipe
sys.stderr.write("\n")
print("x" * 300)  # longer than any terminal: still one line
print("")
print("done")
"""


class Lines:
    """A logger that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: Any) -> None:
        self.lines.append(message % args)


def test_each_line_of_a_stage_is_relayed_once() -> None:
    logger = Lines()
    with subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        tail = flow.relay(process, "train_tokenizer", logger)
    assert logger.lines == ["[train_tokenizer] train: 200/200", f"[train_tokenizer] {'x' * 300}", "[train_tokenizer] done"]
    assert tail == ["train: 200/200", "x" * 300, "done"] and process.returncode == 0
    assert flow.console_line(b"\r10%\r20%\r  \n") == "20%" and flow.console_line(b"plain  \r\n") == "plain"


def test_stage_env_turns_off_mlflow_download_bars(tmp_path: Path) -> None:
    env = flow._stage_env(tmp_path, "run-id")
    assert env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false" and env["SELFTOK_PARENT_RUN_ID"] == "run-id"


def test_the_status_file_names_the_running_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[dict[str, Any] | None] = []

    def stage(name: str, root: str, parent: str, force: bool) -> dict[str, Any]:
        seen.append(read_status(Path(root) / PIPELINE_STATUS))
        return {"stage": name, "skipped": not force, "seconds": 0.0}

    monkeypatch.setattr(flow, "reproduce", SimpleNamespace(with_options=lambda **options: stage))
    pipeline = SimpleNamespace(retries=0, retry_delay_seconds=0, stage_timeout_seconds=60)
    results = flow.run_stages(tmp_path, ["ingest", "validate"], "run", SimpleNamespace(pipeline=pipeline), {"validate"})
    assert [r["skipped"] for r in results] == [True, False]
    first, second = seen
    assert first is not None and second is not None
    assert (first["stage"], first["index"], first["finished"], first["pid"]) == ("ingest", 1, [], os.getpid())
    assert (second["stage"], second["index"], second["finished"], second["stages"]) == ("validate", 2, ["ingest"], ["ingest", "validate"])
    assert second["stage_started"] >= first["stage_started"] >= first["started"]
