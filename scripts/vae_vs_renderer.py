"""Where does an outline get lost: in the VAE, or in the tokens? A grid of val scenes in three
rows: the originals, the VAE's own reconstruction (encode, decode: no tokens), and the
tokenizer's renderer (encode to K codes, render). Prints both PSNRs. Example:

    python scripts/vae_vs_renderer.py --root . --out vae_vs_renderer.png

``--score N`` also asks the project's scene evaluator, on N val scenes, which shapes survive
each path and what the lost ones become (as JSON): the VAE alone, the renderer on the codes,
and the renderer on the encoder's vectors before the codebook (is it the quantiser that loses
them?), with the renderer's shape agreement split by objects per scene (is it crowding?).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from tokenizer_ablation import scenes

from selftok.data.dataset import to_uint8, to_unit
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import reconstruction_agreement, shape_confusion
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
    """Overall shape agreement, then per original shape its agreement and what it was read as."""
    confusion = shape_confusion(evaluator, originals, recon)
    report: dict[str, object] = {"shape_agreement": reconstruction_agreement(evaluator, originals, recon)["shape_agreement"]}
    for shape, read in confusion.items():
        report[shape] = {"agreement": read[shape] / read.total(), "objects": read.total(), "read_as": dict(read.most_common())}
    return report


@torch.no_grad()
def score(model: SelftokTokenizer, evaluator: SceneEvaluator, originals: torch.Tensor) -> dict[str, object]:
    """``shape_report`` per path, and the renderer's shape agreement by objects per scene."""
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
