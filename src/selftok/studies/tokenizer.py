"""A project's trained tokenizer and renderer scored on fixed val scenes, so runs compare row by row.

The val scenes come from the scene generator itself (seed 0, the default holdout pairs), not from
the project's data, so tokenizers trained on other data or params are scored on the same images:
PSNR / SSIM (diffusion, one-step, renderer, prefixes), codes in use, and the scene evaluator's
shape / colour / place agreement with the originals, also per shape and on seen against held-out
colour-shape pairs. Two seeds on 512 val scenes is the bar for comparing recipes: two seeds of
one recipe differ by 2-3 points of shape agreement, and a 128-scene score sits up to 5 points
from the 512-scene one. With ``ceiling`` it adds what the tokens allow downstream, before any VLM
is trained on them: the generation benchmark's scores of real renders of its prompts through the
tokens and renderer (the data ceiling), as the evaluate stage measures it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from selftok.config import Params
from selftok.data.dataset import to_uint8, to_unit
from selftok.data.scenes import SceneConfig, SceneGenerator, render
from selftok.errors import ConfigError
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import holdout_shape_agreement, reconstruction_agreement, shape_agreement_by_shape
from selftok.paths import EVALUATOR
from selftok.stages.arms import SELFTOK
from selftok.studies.benchmark import Benchmark
from selftok.tokenizer.metrics import batched, evaluate_renderer, evaluate_tokenizer
from selftok.tokenizer.model import SelftokTokenizer

HOLDOUT = ("red star", "blue triangle", "green diamond")
DECODE_STEPS, PREFIX_STEPS = 20, 10  # diffusion decodes of the full code and of prefixes


def scenes(split: str, n: int, size: int, cache: Path) -> torch.Tensor:
    """uint8 [n, 3, size, size] scene renders, cached as .npy (generation takes a while)."""
    path = cache / f"scenes_{split}_{n}_{size}.npy"
    if not path.is_file():
        generator = SceneGenerator(SceneConfig(image_size=size, holdout=HOLDOUT), seed=0)
        array = np.stack([np.asarray(render(generator.scene(split, i))) for i in range(n)])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
    return torch.from_numpy(np.load(path)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def agreement(model: SelftokTokenizer, evaluator: SceneEvaluator, val: torch.Tensor, decode_steps: int) -> dict[str, float]:
    """Evaluator agreement (shape, colour, place, whole scene; shape also per original shape, and
    on the held-out colour-shape pairs apart from the seen ones) of the diffusion decode and,
    when trained, the renderer, against the originals."""
    model.eval()
    codes = batched(model.encode, to_unit(val), 64)
    decoders = {"diffusion": lambda c: model.decode(c, steps=decode_steps, seed=0)}
    if model.renderer is not None:
        decoders["renderer"] = model.render
    row: dict[str, float] = {}
    for name, decode in decoders.items():
        recon = to_uint8(batched(decode, codes, 64))
        row |= {f"{name}_{k}": v for k, v in reconstruction_agreement(evaluator, val, recon).items()}
        row |= {f"{name}_shape_agreement_{k}": v for k, v in shape_agreement_by_shape(evaluator, val, recon).items()}
        row |= {f"{name}_shape_agreement_{k}": v for k, v in holdout_shape_agreement(evaluator, val, recon, HOLDOUT).items()}
    return row


def ceiling(root: Path, params: Params) -> dict[str, float]:
    """The data ceiling per prompt set and category (``data_ceiling_<set>_<key>``)."""
    bench = Benchmark.load(root, params)
    return {f"data_ceiling_{name}_{k}": v for name in bench.sets for k, v in bench.reference(name)["data_ceiling"].items()}


def score(root: Path, val_images: int, cache: Path, params: Params | None = None) -> dict[str, float]:
    """The flat row of scores of the root's Selftok tokenizer and renderer (``params``: add the ceiling)."""
    if val_images < 1:
        raise ConfigError(f"--val-images must be at least 1, got {val_images}")
    torch.manual_seed(0)
    model = SELFTOK.load_tokenizer(root, with_renderer=True)
    val = scenes("val", val_images, model.config.image_size, cache)
    row = evaluate_tokenizer(model, val, DECODE_STEPS, PREFIX_STEPS) | evaluate_renderer(model, val)
    row |= agreement(model, SceneEvaluator.load(root / EVALUATOR), val, DECODE_STEPS)
    if params is not None:
        row |= ceiling(root, params)
    return {k: v for k, v in row.items() if not isinstance(v, dict | list)}
