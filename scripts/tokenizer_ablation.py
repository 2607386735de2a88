"""One row of the tokenizer ablation (docs/tokenizer_ablation.md): train, render, evaluate, save a grid.

Uses the scene generator directly (no pipeline needed), so a recipe can be tried before the data
stages exist. Example:

    python scripts/tokenizer_ablation.py --name base --steps 800 --renderer-steps 300 \
        --set schedule=uniform --set lr=6e-4 --threads 1

Writes OUT/NAME/result.json, OUT/NAME/grid.png and OUT/NAME/train.csv. With ``--evaluator DIR``
(a trained scene evaluator, e.g. models/evaluator) the row also says whether reconstructions keep
each object's shape and colour; with ``--tokenizer DIR`` a trained tokenizer is reused and only the
renderer is trained (renderer ablations).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from selftok.config import parse_overrides
from selftok.data.dataset import to_uint8, to_unit
from selftok.data.scenes import SceneConfig, SceneGenerator, render
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import holdout_shape_agreement, reconstruction_agreement, shape_agreement_by_shape
from selftok.tokenizer.grids import reconstruction_grid
from selftok.tokenizer.metrics import batched, evaluate_renderer, evaluate_tokenizer
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.params import RendererParams, TokenizerParams
from selftok.tokenizer.train import train_renderer, train_tokenizer

HOLDOUT = ("red star", "blue triangle", "green diamond")


def scenes(split: str, n: int, size: int, cache: Path) -> torch.Tensor:
    """uint8 [n, 3, size, size] scene renders, cached as .npy (generation takes a while)."""
    path = cache / f"scenes_{split}_{n}_{size}.npy"
    if not path.is_file():
        gen = SceneGenerator(SceneConfig(image_size=size, holdout=HOLDOUT), seed=0)
        arr = np.stack([np.asarray(render(gen.scene(split, i))) for i in range(n)])  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
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
    row = {}
    for name, decode in decoders.items():
        recon = to_uint8(batched(decode, codes, 64))
        row |= {f"{name}_{k}": v for k, v in reconstruction_agreement(evaluator, val, recon).items()}
        row |= {f"{name}_shape_agreement_{k}": v for k, v in shape_agreement_by_shape(evaluator, val, recon).items()}
        row |= {f"{name}_shape_agreement_{k}": v for k, v in holdout_shape_agreement(evaluator, val, recon, HOLDOUT).items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--renderer-steps", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="tokenizer param override KEY=VALUE")
    ap.add_argument("--rset", action="append", default=[], help="renderer param override KEY=VALUE")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-val", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("ablation_runs/tokenizer"))
    ap.add_argument("--tokenizer", type=Path, help="reuse this trained tokenizer folder (no tokenizer training)")
    ap.add_argument("--evaluator", type=Path, help="scene evaluator folder: adds shape/colour agreement")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = args.out / args.name
    out.mkdir(parents=True, exist_ok=True)
    train, val = scenes("train", args.n_train, 32, args.out), scenes("val", args.n_val, 32, args.out)
    tparams = TokenizerParams(**{"steps": args.steps, "eval_every": 10**9, **parse_overrides(args.set)})
    row: dict[str, object] = {"name": args.name, "sets": args.set, "rsets": args.rset, "steps": args.steps}
    if args.tokenizer:
        model = SelftokTokenizer.from_pretrained(args.tokenizer)
        row["tokenizer"] = str(args.tokenizer)
        history: list[dict[str, float]] = []
    else:
        model = SelftokTokenizer(tparams.architecture(32))
        t0 = time.perf_counter()
        result = train_tokenizer(model, train, tparams, seed=0, checkpoints=out / "ckpt")
        history = result.history
        row |= {
            "train_seconds": time.perf_counter() - t0,
            "steps_per_s": result.steps_per_s,
            "final_loss": history[-1]["decoder_mse"],
            "alive": history[-1]["alive_code_fraction"],
        }
        t0 = time.perf_counter()
        row |= evaluate_tokenizer(model, val, tparams.eval.decode_steps, tparams.eval.prefix_steps)
        row["eval_seconds"] = time.perf_counter() - t0
    if args.renderer_steps:
        rparams = RendererParams(**{"steps": args.renderer_steps, "eval_every": 10**9, **parse_overrides(args.rset)})
        t0 = time.perf_counter()
        rres = train_renderer(model, train, rparams, seed=0, checkpoints=out / "rckpt")
        row["renderer_seconds"] = time.perf_counter() - t0
        row["renderer_steps_per_s"] = rres.steps_per_s
        row |= evaluate_renderer(model, val)
    if args.evaluator:
        row |= agreement(model, SceneEvaluator.load(args.evaluator), val, tparams.eval.decode_steps)
    reconstruction_grid(model, val[:10], steps=tparams.eval.decode_steps).save(out / "grid.png")
    model.save_pretrained(out / "model")
    if model.renderer is not None:
        model.save_renderer(out / "renderer")
    with open(out / "train.csv", "w") as f:
        keys = sorted({k for h in history for k in h})
        f.write(",".join(keys) + "\n")
        for h in history:
            f.write(",".join(str(h.get(k, "")) for k in keys) + "\n")
    row.pop("perplexity_per_position", None)
    (out / "result.json").write_text(json.dumps(row, indent=1))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
