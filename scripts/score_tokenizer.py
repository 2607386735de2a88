"""Score a project's trained tokenizer and renderer the way the ablation rows are scored: on the
ablation's 128 val scenes, PSNR / SSIM (diffusion, one-step, renderer, prefixes), codes in use,
and the scene evaluator's shape / colour / place agreement with the originals. This is how a
full pipeline run is put beside the short ablation runs (docs/tokenizer_ablation.md). Example:

    python scripts/score_tokenizer.py --root . --threads 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tokenizer_ablation import agreement, scenes

from selftok.eval.evaluator import SceneEvaluator
from selftok.stages.arms import SELFTOK
from selftok.stages.rl_finetune import EVALUATOR
from selftok.tokenizer.metrics import evaluate_renderer, evaluate_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project with models/tokenizer, models/renderer and models/evaluator")
    ap.add_argument("--cache", type=Path, default=Path("ablation_runs/tokenizer"), help="where the val scenes are cached")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SELFTOK.load_tokenizer(args.root, with_renderer=True)
    val = scenes("val", 128, model.config.image_size, args.cache)
    steps = 20  # the ablation's diffusion decode (prefixes: 10)
    row = evaluate_tokenizer(model, val, steps, 10) | evaluate_renderer(model, val)
    row |= agreement(model, SceneEvaluator.load(args.root / EVALUATOR), val, steps)
    print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict | list)}, indent=1))


if __name__ == "__main__":
    main()
