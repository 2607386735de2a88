"""Score a project's trained tokenizer and renderer the way the ablation rows are scored: on the
ablation's 128 val scenes (or ``--val-images`` of them), PSNR / SSIM (diffusion, one-step,
renderer, prefixes), codes in use, and the scene evaluator's shape / colour / place agreement
with the originals. This is how a full pipeline run is put beside the short ablation runs
(docs/tokenizer_ablation.md). Example:

    python scripts/score_tokenizer.py --root . --threads 2

``--ceiling`` adds what the tokens allow downstream, before any VLM is trained on them: the data
ceiling, the generation benchmark's scores of real renders of its prompts through the tokens and
renderer (held out, and on RL's prompts), as the evaluate stage measures it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rl_seeds import Benchmark
from tokenizer_ablation import agreement, scenes

from selftok.config import PARAMS_FILE, Params, load_params
from selftok.errors import ConfigError
from selftok.eval.evaluator import SceneEvaluator
from selftok.stages.arms import SELFTOK
from selftok.stages.rl_finetune import EVALUATOR
from selftok.tokenizer.metrics import evaluate_renderer, evaluate_tokenizer


def ceiling(root: Path, params: Params) -> dict[str, float]:
    """The data ceiling per prompt set and category (``data_ceiling_<set>_<key>``)."""
    bench = Benchmark.load(root, params)
    return {f"data_ceiling_{name}_{k}": v for name in bench.sets for k, v in bench.reference(name)["data_ceiling"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project with models/tokenizer, models/renderer and models/evaluator")
    ap.add_argument("--cache", type=Path, default=Path("ablation_runs/tokenizer"), help="where the val scenes are cached")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--val-images", type=int, default=128, help="val scenes to score (128: the ablation rows; 512 quarters their variance)")
    ap.add_argument("--ceiling", action="store_true", help="add the generation benchmark's data ceiling on these tokens")
    args = ap.parse_args()
    if args.val_images < 1:
        ap.error(f"--val-images must be at least 1, got {args.val_images}")
    try:  # a malformed params file fails here, before minutes of scoring
        params = load_params(args.root / PARAMS_FILE) if args.ceiling else None
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SELFTOK.load_tokenizer(args.root, with_renderer=True)
    val = scenes("val", args.val_images, model.config.image_size, args.cache)
    steps = 20  # the ablation's diffusion decode (prefixes: 10)
    row = evaluate_tokenizer(model, val, steps, 10) | evaluate_renderer(model, val)
    row |= agreement(model, SceneEvaluator.load(args.root / EVALUATOR), val, steps)
    if params is not None:
        row |= ceiling(args.root, params)
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict | list)}, indent=1))


if __name__ == "__main__":
    main()
