"""Tokenizer commands mounted on the `selftok` app: encode, decode, reconstruct, bench tokenizer.

They use the Selftok arm's models (selftok.paths). Heavy imports happen inside the commands, so
`selftok --help` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from selftok.commands.common import ParamsFile, Root, centre_square, console, fail, merge_bench, read_params
from selftok.config import PARAMS_FILE

if TYPE_CHECKING:
    import torch

    from selftok.tokenizer.model import SelftokTokenizer


def _load(root: Path, renderer: bool) -> SelftokTokenizer:
    from selftok.stages.arms import SELFTOK
    from selftok.tokenizer.model import SelftokTokenizer

    if not (root / SELFTOK.tokenizer / "config.json").is_file():
        fail(f"{root / SELFTOK.tokenizer}: no trained tokenizer; run `dvc repro train_tokenizer` first")
    with_renderer = renderer and (root / SELFTOK.renderer / "config.json").is_file()
    return SelftokTokenizer.from_pretrained(root / SELFTOK.tokenizer, renderer=root / SELFTOK.renderer if with_renderer else None)


def _read_images(paths: list[Path], size: int) -> torch.Tensor:
    """uint8 [N, 3, size, size]: centre crop to a square, then resize."""
    import torch
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as image:
            square = centre_square(image, size, Image.Resampling.BICUBIC)
            out.append(torch.from_numpy(np.array(square)).permute(2, 0, 1))
    return torch.stack(out)


def encode(
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    out: Annotated[Path, typer.Option("--out", help="Codes to write: .npy int64 [N, K], coarsest token first.")] = Path(
        "codes.npy"
    ),
    root: Root = Path("."),
) -> None:
    """Encode images into K discrete Selftok codes each."""
    from selftok.data.dataset import to_unit

    model = _load(root, renderer=False)
    codes = model.encode(to_unit(_read_images(images, model.config.image_size))).numpy()
    np.save(out, codes)
    console.print(f"{len(codes)} images -> codes {codes.shape} in {out}")


def decode(
    codes: Annotated[Path, typer.Argument(help="Codes .npy [N, K] (from `selftok encode`).")],
    out: Annotated[Path, typer.Option("--out", help="Grid image (PNG).")] = Path("decoded.png"),
    steps: Annotated[int, typer.Option(help="Euler steps of the diffusion decoder; 0 = one-step renderer.")] = 0,
    prefix: Annotated[int | None, typer.Option(help="Keep only tokens v1..v_prefix.")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed of the diffusion decoder.")] = 0,
    root: Root = Path("."),
) -> None:
    """Decode codes into images, with the renderer (default) or the diffusion decoder."""
    import torch

    from selftok.stages.arms import SELFTOK
    from selftok.tokenizer.grids import image_grid

    model = _load(root, renderer=steps == 0)
    c = torch.from_numpy(np.load(codes)).long()
    if steps == 0 and model.renderer is None:
        fail(f"{root / SELFTOK.renderer}: no renderer; pass --steps N for the diffusion decoder")
    images = model.render(c, prefix=prefix) if steps == 0 else model.decode(c, steps=steps, prefix=prefix, seed=seed)
    image_grid([images]).save(out)
    console.print(f"{len(c)} images -> {out}")


def reconstruct(
    image: Annotated[Path, typer.Argument(help="An image file.")],
    out: Annotated[Path, typer.Option("--out", help="Grid image (PNG).")] = Path("reconstruction.png"),
    steps: Annotated[int, typer.Option(help="Euler steps of the diffusion decodes.")] = 20,
    seed: Annotated[int, typer.Option(help="Noise seed of the diffusion decoder.")] = 0,
    root: Root = Path("."),
) -> None:
    """Grid, top to bottom: original, diffusion decode, renderer, diffusion decodes of prefixes 1, 2, 4, ..."""
    from selftok.data.dataset import to_unit
    from selftok.tokenizer.grids import reconstruction_grid
    from selftok.tokenizer.metrics import psnr_8bit

    model = _load(root, renderer=True)
    images = _read_images([image], model.config.image_size)
    reconstruction_grid(model, images, steps=steps, seed=seed).save(out)
    x = to_unit(images)
    codes = model.encode(x)
    line = f"diffusion {float(psnr_8bit(model.decode(codes, steps=steps, seed=seed), x)[0]):.2f} dB"
    if model.renderer is not None:
        line += f", renderer {float(psnr_8bit(model.render(codes), x)[0]):.2f} dB"
    console.print(f"{out}: {line} (8-bit PSNR)")


def bench_tokenizer(
    n: Annotated[int, typer.Option(help="Images per measurement.")] = 64,
    train_steps: Annotated[int, typer.Option(help="Training steps to time (params batch size).")] = 5,
    root: Root = Path("."),
    params: ParamsFile = PARAMS_FILE,
) -> None:
    """Encode, render and diffusion-decode images/s and train steps/s -> metrics/bench.json (merged)."""
    import tempfile

    import torch

    from selftok.stages.arms import SELFTOK
    from selftok.tokenizer.model import SelftokTokenizer
    from selftok.tokenizer.train import train_tokenizer

    p = read_params(root, params)
    size = p.data.image_size
    if (root / SELFTOK.tokenizer / "config.json").is_file():
        model = _load(root, renderer=True)
    else:  # an untrained model of the configured size times the same
        model = SelftokTokenizer(p.tokenizer.architecture(size, root)).eval()
    if model.renderer is None:
        model.renderer = model.new_renderer()
    x = torch.rand(n, 3, model.config.image_size, model.config.image_size) * 2 - 1

    def rate(fn) -> float:
        fn()  # warm-up
        start = time.perf_counter()
        fn()
        return n / (time.perf_counter() - start)

    codes = model.encode(x)
    steps = p.tokenizer.eval.decode_steps
    results = {
        "encode_images_per_s": rate(lambda: model.encode(x)),
        "render_images_per_s": rate(lambda: model.render(codes)),
        "diffusion_decode_images_per_s": rate(lambda: model.decode(codes, steps=steps)),
        "diffusion_decode_steps": float(steps),
    }
    fresh = SelftokTokenizer(p.tokenizer.architecture(size, root))
    images = torch.randint(0, 256, (max(p.tokenizer.batch_size, n), 3, size, size), dtype=torch.uint8)
    train_params = p.tokenizer.model_copy(update={"steps": train_steps, "warmup_steps": 0, "log_every": train_steps})
    with tempfile.TemporaryDirectory() as tmp:
        result = train_tokenizer(fresh, images, train_params, seed=0, checkpoints=Path(tmp))
    results["tokenizer_train_steps_per_s"] = result.steps_per_s
    results["tokenizer_bench_threads"] = float(torch.get_num_threads())
    path = merge_bench(root, results)
    console.print_json(data=results)
    console.print(f"merged into {path}")
