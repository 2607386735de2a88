"""`selftok status`: what runs now, or what changed since the last run; then the headline metrics
and the registry aliases.

While a pipeline or a stage runs, DVC holds its repository lock and `dvc status` can only say
so. The flow and the running stage keep small JSON status files instead (selftok.progress), and
this command reads them: which stage runs, since when, and how far its current loop is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from selftok.commands.common import Root, console, read_params
from selftok.progress import PIPELINE_STATUS, STAGE_STATUS, duration, rate_text, read_status

REGISTERED_MODELS = (
    "selftok-tokenizer", "selftok-renderer", "selftok-evaluator", "selftok-judge", "selftok-vlm", "selftok-spatial", "selftok-spatial-vlm",
)


def _since(started: float, now: float) -> str:
    return f"since {time.strftime('%H:%M:%S', time.localtime(started))} ({duration(now - started)} ago)"


def _loop_line(stage: dict[str, Any], now: float) -> str | None:
    """The running stage's current loop: counts, percent, rate, time left, age of the figures."""
    if "loop" not in stage:
        return None
    done, total, rate = stage["done"], stage.get("total"), stage.get("rate") or 0.0
    line = f"{stage['loop']}: {done}" + (f"/{total} ({100 * done / total:.0f}%)" if total else "")
    line += f", {rate_text(rate)}"
    if total and rate > 0 and done < total:
        line += f", about {duration((total - done) / rate)} left"
    return line + f" (as of {duration(now - stage['updated'])} ago)"


def running(root: Path, now: float | None = None) -> list[str]:
    """Lines saying what runs in ``root`` now: the pipeline, its stage, the stage's loop ([] when nothing runs)."""
    now = time.time() if now is None else now
    pipeline, stage = read_status(root / PIPELINE_STATUS), read_status(root / STAGE_STATUS)
    lines = []
    if pipeline is not None:
        lines.append(f"pipeline running {_since(pipeline['started'], now)}: {len(pipeline.get('finished', []))} of "
                     f"{len(pipeline['stages'])} stages done")
        if pipeline.get("stage"):
            lines.append(f"stage {pipeline['stage']} ({pipeline['index']}/{len(pipeline['stages'])}) "
                         f"{_since(pipeline['stage_started'], now)}")
    if stage is not None:
        if pipeline is None or pipeline.get("stage") != stage["stage"]:
            lines.append(f"stage {stage['stage']} running {_since(stage['stage_started'], now)}")
        loop = _loop_line(stage, now)
        lines += [loop] if loop else []
    return lines


def _metrics_table(root: Path) -> Table:
    from selftok.nested import flatten

    table = Table("metric", "value")
    for path in sorted((root / "metrics").glob("*.json")):
        for key, value in flatten(json.loads(path.read_text()), f"{path.stem}.").items():
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def _aliases(root: Path) -> Table:
    from selftok import tracking

    tracking.configure(root.resolve(), read_params(root).tracking.experiment)
    aliases = Table("model", tracking.CHAMPION, tracking.CHALLENGER)
    for name in REGISTERED_MODELS:
        aliases.add_row(name, *(tracking.alias_version(name, a) or "-" for a in (tracking.CHAMPION, tracking.CHALLENGER)))
    return aliases


def status(root: Root = Path(".")) -> None:
    """What runs now (stage, since when, how far) or DVC status; the latest headline metrics; the registry aliases."""
    now = running(root)
    if now:
        console.rule("running")
        console.print("\n".join(now), markup=False, highlight=False)
    else:
        out = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True)
        console.rule("DVC status")
        console.print((out.stdout or out.stderr).strip() or "everything is up to date")
    console.rule("metrics")
    console.print(_metrics_table(root))
    console.rule("registry")
    console.print(_aliases(root))
