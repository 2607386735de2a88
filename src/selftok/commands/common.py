"""What the command groups share: the console, the one-line failure, reading params and images
given on the command line, and metrics/bench.json, where every speed benchmark merges its numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from selftok.config import PARAMS_FILE, Params, load_params
from selftok.errors import ConfigError

if TYPE_CHECKING:
    from PIL import Image

console = Console(stderr=True)
BENCH_FILE = Path("metrics/bench.json")
Root = Annotated[Path, typer.Option("--root", help="Project root (holds params.yaml and models/).")]
ParamsFile = Annotated[str, typer.Option("--params", help="Params file, relative to the root.")]


def fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=1)


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
