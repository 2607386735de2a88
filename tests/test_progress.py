"""selftok.progress: a loop's output stays a few lines in a log, and its status file says how far it is."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selftok import progress
from selftok.progress import Progress, read_status, report_to, track, write_status


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def test_a_stage_like_loop_writes_a_bounded_log_to_a_non_terminal(clock: Clock) -> None:
    """Start and finish log lines, 5000 steps a second apart, a postfix every 25 steps: at most 13 lines."""
    stream = io.StringIO()
    log = logging.getLogger("test.progress.stage")
    handler = logging.StreamHandler(stream)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("stage train: started")
        with Progress(5000, "train", stream=stream) as bar:
            for step in range(5000):
                clock.now += 1.0
                bar.update()
                if step % 25 == 0:
                    bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
        log.info("stage train: done")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) <= 2 + 11, lines
    assert lines[-2].startswith("train: 5000/5000 (100%)") and "loss" in lines[-2]
    assert all("\r" not in line for line in lines)


def test_lines_come_at_most_once_a_tenth_and_once_a_minute(clock: Clock) -> None:
    stream = io.StringIO()
    with Progress(100, "fast", stream=stream) as bar:  # 100 steps in 10 s: only the final line
        for _ in range(100):
            clock.now += 0.1
            bar.update()
    assert stream.getvalue().count("\n") == 1
    stream = io.StringIO()
    with Progress(1000, "slow", stream=stream) as bar:  # 1000 steps in 1000 s: one line per tenth
        for _ in range(1000):
            clock.now += 1.0
            bar.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"slow: {n}/1000" for n in range(100, 1001, 100)]
    stream = io.StringIO()
    with Progress(None, "open-ended", stream=stream) as bar:  # no total: at most one line a minute
        for _ in range(600):
            clock.now += 1.0
            bar.update()
    assert len(stream.getvalue().splitlines()) == 10


def test_resumed_loop_counts_from_its_start_and_disabled_is_silent(clock: Clock) -> None:
    stream = io.StringIO()
    with Progress(10, "resumed", initial=8, stream=stream) as bar:
        clock.now += 2.0
        bar.update(2)
    assert stream.getvalue().startswith("resumed: 10/10 (100%), 1 it/s")
    quiet = io.StringIO()
    with Progress(10, "rank 1", enabled=False, stream=quiet) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""


def test_a_child_with_a_piped_stderr_writes_lines_not_a_redrawn_bar(tmp_path: Path) -> None:
    code = "from selftok.progress import track\nfor _ in track(range(300), 'loop'): pass\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines() if line.startswith("loop: ")]
    assert len(result.stderr.splitlines()) == 1 and "\r" not in result.stderr


def test_status_file_follows_the_loop_and_goes_with_the_stage(tmp_path: Path, clock: Clock) -> None:
    status = tmp_path / ".dvc" / "tmp" / "stage.json"
    report_to(status, stage="train_tokenizer", stage_started=123.0)
    try:
        assert read_status(status) == {"pid": os.getpid(), "stage": "train_tokenizer", "stage_started": 123.0}
        items = track(range(40), "train")
        for _ in range(20):
            next(items)
            clock.now += progress.STATUS_INTERVAL
        seen = read_status(status)
        assert seen is not None and (seen["loop"], seen["total"]) == ("train", 40) and 18 <= seen["done"] <= 20
        list(items)
        assert read_status(status)["done"] == 40  # type: ignore[index]
    finally:
        report_to(None)
    assert not status.exists()


def test_a_status_left_by_a_dead_process_reads_as_nothing(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    write_status(tmp_path / "s.json", {"pid": int(dead.stdout), "stage": "ingest"})
    assert read_status(tmp_path / "s.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_status(tmp_path / "bad.json") is None and read_status(tmp_path / "missing.json") is None
    write_status(tmp_path / "live.json", {"pid": os.getpid()})
    assert json.loads((tmp_path / "live.json").read_text()) == read_status(tmp_path / "live.json")


def test_a_terminal_gets_a_bar_redrawn_in_place() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(50, "train", stream=stream) as bar:
        assert bar.bar is not None
        bar.update(50)
    assert "\r" in stream.getvalue() and "50/50" in stream.getvalue()
