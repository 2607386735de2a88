"""`selftok generate`, `selftok caption` and `selftok bench vlm`: the Selftok arm's VLM from the command line.

Heavy imports (torch, transformers) happen inside the commands, so `selftok --help` stays fast.

Sampling settings default to params.yaml `vlm.sampling` (the recipe the scores were made with);
options override them for one call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selftok.commands.common import ParamsFile, Root, centre_square, console, fail, merge_bench, read_params
from selftok.config import PARAMS_FILE


def generate(
    prompt: Annotated[str, typer.Argument(help="Caption of the image, e.g. 'a photo of two red circles'.")],
    n: Annotated[int, typer.Option("-n", help="Images to sample.")] = 8,
    out: Annotated[Path, typer.Option("--out", help="Grid image to write (PNG).")] = Path("grid.png"),
    cfg_scale: Annotated[float | None, typer.Option(help="Classifier-free guidance scale (default: params).")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: params).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k over visual tokens, 0 = all (default: params).")] = None,
    min_p: Annotated[float | None, typer.Option(help="Plausibility cut relative to the top conditional token (default: params).")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (default: params).")] = None,
    scale: Annotated[int, typer.Option(help="Pixel upscaling of the grid.")] = 4,
    root: Root = Path("."),
    params: ParamsFile = PARAMS_FILE,
) -> None:
    """Sample N images for a prompt with the pretrained VLM and save them as a grid."""
    from selftok.data.dataset import to_uint8
    from selftok.stages.arms import SELFTOK
    from selftok.viz import image_grid
    from selftok.vlm.decode import render_fn
    from selftok.vlm.model import SelftokVLM

    sampling = read_params(root, params).vlm.sampling
    overrides = {k: v for k, v in {"cfg_scale": cfg_scale, "temperature": temperature, "top_k": top_k, "min_p": min_p, "seed": seed}.items() if v is not None}
    if not SELFTOK.can_render(root):
        fail(f"{root / 'models'}: no tokenizer + renderer to turn codes into images; run `dvc repro train_renderer`")
    try:
        vlm = SelftokVLM.from_pretrained(root / SELFTOK.vlm)
    except FileNotFoundError as error:
        fail(str(error))
    vlm.sampling = sampling.model_copy(update=overrides)
    decode = render_fn(SELFTOK.load_tokenizer(root, with_renderer=True))
    codes = vlm.generate([prompt], n)
    image_grid(to_uint8(decode(codes)), columns=min(n, 8), scale=scale).save(out)
    console.print(f"wrote {out} ({n} images; sampling {vlm.sampling.model_dump()})")


def caption(
    image: Annotated[Path, typer.Argument(help="Image file to describe.")],
    root: Root = Path("."),
    params: ParamsFile = PARAMS_FILE,
) -> None:
    """Encode an image with the Selftok tokenizer and caption it with the VLM."""
    import numpy as np
    import torch
    from PIL import Image

    from selftok.data.dataset import to_unit
    from selftok.stages.arms import SELFTOK
    from selftok.tokenizer.model import SelftokTokenizer
    from selftok.vlm.model import SelftokVLM

    if not image.is_file():
        fail(f"{image}: no such image")
    size = read_params(root, params).data.image_size
    try:
        tokenizer = SelftokTokenizer.from_pretrained(root / SELFTOK.tokenizer)
        vlm = SelftokVLM.from_pretrained(root / SELFTOK.vlm)
    except FileNotFoundError as error:
        fail(str(error))
    picture = centre_square(Image.open(image), size, Image.Resampling.BOX)
    pixels = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)[None]
    codes = tokenizer.encode(to_unit(pixels))
    typer.echo(vlm.caption(codes)[0])


def bench_vlm(root: Root = Path("."), params: ParamsFile = PARAMS_FILE) -> None:
    """Generation tokens/s with and without KV cache, training tokens/s -> metrics/bench.json.

    Times models/vlm when it exists, else a freshly built model of the params' size."""
    from selftok.stages.arms import SELFTOK
    from selftok.vlm.bench import bench_model, scene_captions
    from selftok.vlm.bench import bench_vlm as run_bench

    loaded = read_params(root, params)
    captions = scene_captions(loaded.data.scenes.max_objects, loaded.seed, 256)
    vlm = bench_model(root / SELFTOK.vlm, root / SELFTOK.codes, loaded.vlm, captions, loaded.seed)
    results = run_bench(vlm, loaded.vlm, captions[:16], loaded.seed)
    path = merge_bench(root, results)
    console.print_json(data=results)
    console.print(f"merged into {path}")
