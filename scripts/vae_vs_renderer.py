"""Where does an outline get lost: in the VAE, or in the tokens? A grid of val scenes in three
rows: the originals, the VAE's own reconstruction (encode, decode: no tokens), and the
tokenizer's renderer (encode to K codes, render). Prints both PSNRs. Example:

    python scripts/vae_vs_renderer.py --root . --out vae_vs_renderer.png

``--score N`` also asks the project's scene evaluator, on N val scenes, which shapes survive
each path and what the lost ones become (as JSON): the VAE alone, the renderer on the codes,
and the renderer on the encoder's vectors before the codebook (is it the quantiser that loses
them?), with the renderer's shape agreement split by objects per scene (is it crowding?). It
adds two checks of the latent space itself: the VAE's shape agreement under random latent noise
as large as the renderer's latent error (does any error that size lose shapes?), and what
redrawing one object as another shape costs in pixel and in latent MSE, beside moving or
growing it by one pixel (does the tokenizer's latent loss see shape at all?).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizer_ablation import HOLDOUT, scenes

from selftok.data.dataset import to_uint8, to_unit
from selftok.data.scenes import SHAPES, SceneConfig, SceneGenerator, render
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import (
    grouped_shape_agreement,
    holdout_shape_agreement,
    is_held_out,
    reconstruction_agreement,
    shape_agreement_by_shape,
    shape_confusion,
)
from selftok.stages.arms import SELFTOK
from selftok.stages.rl_finetune import EVALUATOR
from selftok.tokenizer.metrics import batched, psnr_8bit
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.space import VaeSpace

ImageFn = Callable[[torch.Tensor], torch.Tensor]


def paths(model: SelftokTokenizer) -> dict[str, ImageFn]:
    """Images [-1, 1] -> reconstructions [-1, 1] along each path an outline can take."""
    renderer, space = model.renderer, model.space
    assert renderer is not None
    every = torch.ones(1, model.config.num_tokens, dtype=torch.bool)

    def unquantised(x: torch.Tensor) -> torch.Tensor:
        vectors = model.quantizer.project(model.encoder(space.encode(x)))
        return space.decode(renderer(vectors, every.expand(len(x), -1))).clamp(-1, 1)

    return {
        "vae": lambda x: space.decode(space.encode(x)).clamp(-1, 1),
        "renderer": lambda x: model.render(model.encode(x)),
        "renderer_unquantised": unquantised,
    }


def shape_report(evaluator: SceneEvaluator, originals: torch.Tensor, recon: torch.Tensor) -> dict[str, object]:
    """Overall shape agreement, on seen and on held-out colour-shape pairs, then per original
    shape its agreement (also on its held-out pair alone, where it has one) and what it was read as."""
    report: dict[str, object] = {"shape_agreement": reconstruction_agreement(evaluator, originals, recon)["shape_agreement"]}
    report |= {f"shape_agreement_{k}": v for k, v in holdout_shape_agreement(evaluator, originals, recon, HOLDOUT).items()}
    held = is_held_out(HOLDOUT)
    by_pair = grouped_shape_agreement(
        evaluator, originals, recon, lambda obj: f"{obj.shape} {'heldout' if held(obj) else 'seen'}"
    )
    for shape, read in shape_confusion(evaluator, originals, recon).items():
        report[shape] = {"agreement": read[shape] / read.total(), "objects": read.total(), "read_as": dict(read.most_common())}
        report[shape] |= {
            f"agreement_{group}_pairs": by_pair[f"{shape} {group}"]
            for group in ("seen", "heldout")
            if f"{shape} {group}" in by_pair
        }
    return report


@torch.no_grad()
def latent_noise(model: SelftokTokenizer, evaluator: SceneEvaluator, originals: torch.Tensor) -> dict[str, object]:
    """The renderer's latent error (RMS, in the tokenizer's scaled latent units) and the VAE's
    shape agreement by shape when random noise of that order is added to the true latents."""
    x = to_unit(originals)
    latents = batched(model.space.encode, x, 64)
    codes = batched(model.encode, x, 64)
    assert model.renderer is not None
    every = torch.ones(len(codes), model.config.num_tokens, dtype=torch.bool)
    rendered = torch.cat([model.renderer(model.tokens(codes[i : i + 64]), every[i : i + 64]) for i in range(0, len(codes), 64)])
    result: dict[str, object] = {"renderer_latent_rms_error": float((rendered - latents).pow(2).mean().sqrt())}
    generator = torch.Generator().manual_seed(0)
    for sigma in (0.1, 0.2, 0.3):
        noisy = latents + sigma * torch.randn(latents.shape, generator=generator)
        recon = to_uint8(batched(lambda z: model.space.decode(z).clamp(-1, 1), noisy, 64))
        result[f"vae_noise_{sigma}"] = shape_agreement_by_shape(evaluator, originals, recon)
    return result


@torch.no_grad()
def swap_costs(model: SelftokTokenizer, n_scenes: int) -> dict[str, dict[str, dict[str, float]]]:
    """Mean pixel and latent MSE of changing one object of a val scene, per original shape: redrawn
    as each other shape in the same box, moved right by a pixel, or grown by a pixel."""
    generator = SceneGenerator(SceneConfig(image_size=model.config.image_size, holdout=HOLDOUT), seed=0)
    pairs: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = {}
    for i in range(n_scenes):
        scene = generator.scene("val", i)
        original = np.asarray(render(scene))
        for j, obj in enumerate(scene.objects):
            x0, y0, x1, y1 = obj.box
            changes = {other: dataclasses.replace(obj, shape=other) for other in SHAPES if other != obj.shape}
            changes["moved_1px"] = dataclasses.replace(obj, box=(x0 + 1, y0, x1 + 1, y1))
            changes["grown_1px"] = dataclasses.replace(obj, box=(x0, y0, x1 + 1, y1 + 1))
            for name, changed in changes.items():
                objects = [changed if k == j else o for k, o in enumerate(scene.objects)]
                pairs.setdefault((obj.shape, name), []).append(
                    (original, np.asarray(render(dataclasses.replace(scene, objects=objects))))
                )
    costs: dict[str, dict[str, dict[str, float]]] = {}
    for (shape, name), images in pairs.items():
        a, b = (to_unit(torch.from_numpy(np.stack(side)).permute(0, 3, 1, 2)) for side in zip(*images, strict=True))
        latent = (batched(model.space.encode, a, 64) - batched(model.space.encode, b, 64)).pow(2).mean()
        costs.setdefault(shape, {})[name] = {"pixel_mse": float((a - b).pow(2).mean()), "latent_mse": float(latent)}
    return costs


@torch.no_grad()
def score(model: SelftokTokenizer, evaluator: SceneEvaluator, originals: torch.Tensor) -> dict[str, object]:
    """``shape_report`` per path, the renderer's shape agreement by objects per scene, the mean
    cosine between the encoder's vectors and their codes, ``latent_noise`` and ``swap_costs``."""
    x = to_unit(originals)
    recon = {name: to_uint8(batched(fn, x, 64)) for name, fn in paths(model).items()}
    result: dict[str, object] = {name: shape_report(evaluator, originals, images) for name, images in recon.items()}
    counts = torch.tensor([len(objects) for objects in evaluator.parse(originals)])
    crowding = {}
    for n in counts.unique().tolist():
        if n:
            pick = counts == n
            crowding[n] = reconstruction_agreement(evaluator, originals[pick], recon["renderer"][pick])["shape_agreement"]
    result["renderer_by_objects_per_scene"] = crowding
    quantizer = model.quantizer
    vectors = batched(lambda v: quantizer.project(model.encoder(model.space.encode(v))), x, 64)
    result["code_cosine"] = float((vectors * quantizer.lookup(quantizer.nearest(vectors))).sum(-1).mean())  # vector vs its code
    result["latent_noise"] = latent_noise(model, evaluator, originals)
    result["swap_costs"] = swap_costs(model, min(len(originals), 128))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project with a trained tokenizer and renderer on VAE latents")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--n", type=int, default=16, help="val scenes in the grid")
    ap.add_argument("--cache", type=Path, default=Path("ablation_runs/tokenizer"), help="where the val scenes are cached")
    ap.add_argument(
        "--score", type=int, default=0, metavar="N", help="also score the paths on N val scenes with the scene evaluator"
    )
    args = ap.parse_args()
    if args.score < 0:
        ap.error(f"--score must be 0 (off) or a number of val scenes, got {args.score}")
    model = SELFTOK.load_tokenizer(args.root, with_renderer=True).eval()
    if not isinstance(model.space, VaeSpace):
        raise SystemExit(f"{args.root}: the tokenizer reads pixels; there is no VAE to compare with")
    if args.score:
        val = scenes("val", max(args.score, 128), model.config.image_size, args.cache)[: args.score]
        print(json.dumps(score(model, SceneEvaluator.load(args.root / EVALUATOR), val), indent=1))
    x = to_unit(scenes("val", 128, model.config.image_size, args.cache)[: args.n])
    with torch.no_grad():
        vae = model.space.decode(model.space.encode(x)).clamp(-1, 1)
        rendered = model.render(model.encode(x)).clamp(-1, 1)
    print(f"VAE {float(psnr_8bit(vae, x).mean()):.2f} dB, renderer {float(psnr_8bit(rendered, x).mean()):.2f} dB (8-bit PSNR)")
    rows = [torch.cat(list(images), dim=2) for images in (x, vae, rendered)]
    pixels = ((torch.cat(rows, dim=1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)
    image.resize((image.width * 3, image.height * 3), Image.NEAREST).save(args.out)


if __name__ == "__main__":
    main()
