"""Progress of long loops, readable both on a terminal and in a log file.

Every long loop (training and RL steps, evaluator epochs, shard writing) reports through
``Progress``, so one pipeline run stays a few hundred lines however many steps it trains:

- stderr is a terminal: a tqdm bar, updated in place;
- otherwise (a pipe, a file, a CI log): one plain line each time the loop passes another tenth
  of its total, but never two lines within ``MIN_INTERVAL`` seconds, then one final line. A loop
  writes at most 11 lines, fewer when it is short (a loop under a minute writes only its final
  line); one of unknown length writes at most one line a minute.

Step-level curves belong in MLflow, not here. When a stage has called ``report_to``, the loop
also keeps a small JSON status file up to date (at most every ``STATUS_INTERVAL`` seconds), which
``selftok status`` reads to say what is running and how far it is.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

MIN_INTERVAL = 60.0  # seconds between two plain progress lines
STATUS_INTERVAL = 5.0  # seconds between two writes of the status file
# Status files, relative to the project root: under DVC's own scratch folder, which git ignores
# and DVC never tracks. The flow writes the pipeline's, the running stage its own.
PIPELINE_STATUS = Path(".dvc", "tmp", "selftok-pipeline.json")
STAGE_STATUS = Path(".dvc", "tmp", "selftok-stage.json")

T = TypeVar("T")
_report: dict[str, Any] = {}  # where loops report ("path") and the stage fields they add


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal (a bar can redraw itself there)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` in one step, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    partial.replace(path)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def read_status(path: Path) -> dict[str, Any] | None:
    """The status in ``path``, or None when there is none or its writer is no longer running."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and _alive(data.get("pid")) else None


def report_to(path: Path | None, **fields: Any) -> None:
    """Make every loop of this process keep ``path`` up to date (None: stop, and remove the file).

    ``fields`` (e.g. the stage's name and start time) go into every write.
    """
    old = _report.get("path")
    _report.clear()
    if path is None:
        if old is not None:
            Path(old).unlink(missing_ok=True)
        return
    _report.update(path=path, fields={"pid": os.getpid(), **fields})
    write_status(path, _report["fields"])


def duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``1h05m``: short enough for a progress line."""
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def rate_text(rate: float) -> str:
    """``2.41 it/s``, ``2270 it/s``: three significant digits, never an exponent."""
    return f"{rate:.3g} it/s" if rate < 100 else f"{rate:.0f} it/s"


class Progress:
    """A counter for one loop: ``update`` after each item, ``close`` (or leave the ``with``) at the end."""

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, min_interval: float = MIN_INTERVAL) -> None:
        self.total, self.desc, self.done, self.enabled = total, desc, initial, enabled
        self.stream = stream or sys.stderr
        self.min_interval, self.postfix = min_interval, ""
        self.started = self.last_line = time.monotonic()
        self.start_done, self.last_status = initial, -math.inf
        self.wall_started, self.printed = time.time(), -1
        self.next_tenth = self._tenths() + 1
        interactive = enabled and is_terminal(self.stream)
        self.bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, dynamic_ncols=True) if interactive else None
        self.closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.close()

    def _tenths(self) -> int:
        return math.floor(10 * self.done / self.total) if self.total else 0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; prints or writes the status file only when it is due."""
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bar is not None:
            self.bar.update(n)
        elif now - self.last_line >= self.min_interval and (not self.total or self._tenths() >= self.next_tenth):
            self._line(now)
        if _report and now - self.last_status >= STATUS_INTERVAL:
            self._status(now)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counts (e.g. the latest loss)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def rate(self, now: float) -> float:
        """Items per second since this loop (or its resumed part) started."""
        return (self.done - self.start_done) / max(now - self.started, 1e-9)

    def describe(self, now: float) -> str:
        """One line: counts, percent, rate, elapsed, remaining, postfix."""
        rate = self.rate(now)
        parts = [f"{self.desc}: {self.done}" + (f"/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else "")]
        parts += [rate_text(rate), f"{duration(now - self.started)} elapsed"]
        if self.total and rate > 0 and self.done < self.total:
            parts.append(f"{duration((self.total - self.done) / rate)} left")
        return ", ".join(parts + ([self.postfix] if self.postfix else []))

    def _line(self, now: float) -> None:
        self.stream.write(self.describe(now) + "\n")
        self.stream.flush()
        self.last_line, self.next_tenth, self.printed = now, self._tenths() + 1, self.done

    def _status(self, now: float) -> None:
        self.last_status = now
        loop = {"loop": self.desc, "done": self.done, "total": self.total, "loop_started": self.wall_started,
                "rate": self.rate(now), "updated": time.time()}
        write_status(_report["path"], {**_report["fields"], **loop})

    def close(self) -> None:
        """The final line (plain output, unless the last one said the same) and the last status write; idempotent."""
        if self.closed:
            return
        self.closed = True
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bar is not None:
            self.bar.close()
        elif self.printed != self.done:
            self._line(now)
        if _report:
            self._status(now)


def track(items: Iterable[T], desc: str, *, total: int | None = None, initial: int = 0, enabled: bool = True) -> Iterator[T]:
    """``items``, counted by a ``Progress`` (``total`` defaults to ``len(items)`` where there is one)."""
    if total is None and hasattr(items, "__len__"):
        total = initial + len(items)  # type: ignore[arg-type]
    with Progress(total, desc, initial=initial, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.update()
