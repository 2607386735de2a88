"""The log rows of a run kept beside its checkpoints, so the curves of a resumed run are whole."""

from __future__ import annotations

import json
from pathlib import Path

from selftok.training.loop import Callbacks, LogFn

HISTORY = "history.jsonl"


def history_logger(checkpoints: Path, log: LogFn, trim: bool) -> Callbacks:
    """Callbacks passing each log row to ``log`` and appending it to the history. With ``trim``
    (the tracking rank only: workers of a multi-process launch must not rewrite rank 0's file),
    rows past the checkpoint the run resumes from are dropped first: they will be redone."""
    path = checkpoints / HISTORY
    resume_step = max((int(p.name.split("_")[1]) for p in checkpoints.glob("step_*")), default=0)
    if trim and path.is_file():
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
        path.write_text("".join(r + "\n" for r in rows))

    def on_log(step: int, logs: dict[str, float]) -> None:
        log(step, logs)
        checkpoints.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps({"step": step, **logs}) + "\n")

    return Callbacks(on_log=on_log)


def read_history(checkpoints: Path) -> list[dict[str, float]]:
    """The rows ``history_logger`` kept (none before the first log)."""
    path = checkpoints / HISTORY
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
