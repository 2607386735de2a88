"""What the command groups share: the console, the one-line failure, reading params and images
given on the command line, and metrics/bench.json, where every speed benchmark merges its numbers."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TextIO

import typer
from rich.console import Console
from rich.logging import RichHandler

from selftok.config import PARAMS_FILE, Params, load_params
from selftok.errors import ConfigError
from selftok.progress import is_terminal

if TYPE_CHECKING:
    from PIL import Image

console = Console(stderr=True)
BENCH_FILE = Path("metrics/bench.json")
Root = Annotated[Path, typer.Option("--root", help="Project root (holds params.yaml and models/).")]
ParamsFile = Annotated[str, typer.Option("--params", help="Params file, relative to the root.")]


def fail(message: str) -> NoReturn:
    """One line on stderr, never wrapped (a long path must not split the message), then exit 1."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code=1)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record arrives: a runner that swaps stderr for a
    while (a test's CLI runner, a subprocess wrapper) and closes its stream must not leave the
    root logger writing to a closed file."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging(verbose: bool = False) -> None:
    """Rich on a terminal; elsewhere one plain line a record (Rich would wrap each at 80 columns in a log)."""
    if is_terminal(sys.stderr):
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
    else:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    quiet = ("alembic", "urllib3", "httpx", "git", "filelock", "great_expectations", "mlflow.system_metrics", "mlflow.store.db.utils")
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def read_params(root: Path, params: str = PARAMS_FILE) -> Params:
    """The params file, or a one-line failure naming the bad key."""
    try:
        return load_params(root / params)
    except ConfigError as error:
        fail(str(error))


def centre_square(image: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """An RGB ``size`` x ``size`` image: the centre square of ``image``, resized."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), resample)


def merge_bench(root: Path, results: dict[str, float]) -> Path:
    """Update metrics/bench.json in place, keeping what other benchmarks wrote."""
    path = root / BENCH_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path
