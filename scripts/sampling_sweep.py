"""A VLM's benchmark scores under other sampling recipes (docs/rl_finetune.md, fifteenth session).

A better recipe would give RL a better starting policy, but choosing it on the held-out benchmark
would let the benchmark pick the model it then judges. So every recipe is scored on as many of
RL's own prompts as on held-out ones (the same two sets as `scripts/rl_seeds.py`), under several
sampling seeds; choose on `train`, check on `heldout`:

    python scripts/sampling_sweep.py --root . --out sweep.json --seeds 2 \\
        --recipe cfg_scale=3 --recipe cfg_scale=7 --recipe min_p=0.2,temperature=0.8

Each recipe overrides keys of `vlm.sampling` (the seed is the recipe's own plus 0..SEEDS-1). The
JSON holds one row per recipe, seed and prompt set; the table printed at the end, the mean overall
per recipe and set.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from rl_seeds import Benchmark, reseeded

from selftok.config import PARAMS_FILE, ConfigError, Params, merged, parse_overrides, parse_params, read_params
from selftok.data.scenes import CATEGORIES

PROMPT_SETS = ("train", "heldout")
KEPT = ("overall", "overall_se", "overall_strict", "extra_objects", *CATEGORIES)  # of each score's summary


def with_sampling(raw: dict, recipe: str, seed: int) -> Params:
    """The params with ``recipe`` (comma-separated KEY=VALUE of vlm.sampling) and sampling seed + ``seed``."""
    overrides = parse_overrides([f"vlm.sampling.{item.strip()}" for item in recipe.split(",")])
    return reseeded(parse_params(merged(raw, overrides), f"--recipe {recipe}"), seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project with models/vlm, its tokenizer and evaluator")
    ap.add_argument("--model", type=Path, default=Path("models/vlm"), help="the VLM folder, relative to the root")
    ap.add_argument("--recipe", action="append", required=True, help="KEY=VALUE[,KEY=VALUE] of vlm.sampling, e.g. cfg_scale=7")
    ap.add_argument("--seeds", type=int, default=2, help="sampling seeds per recipe")
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the scores")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root.resolve()
    raw = read_params(root / PARAMS_FILE)
    try:  # every recipe is checked before the first image is drawn
        recipes = {recipe: [with_sampling(raw, recipe, seed) for seed in range(args.seeds)] for recipe in args.recipe}
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    bench = Benchmark.load(root, next(iter(recipes.values()))[0])
    rows = []
    for recipe, seeded in recipes.items():
        for seed, params in enumerate(seeded):
            for prompts in PROMPT_SETS:
                summary = bench.with_params(params).score(root / args.model, prompts)
                rows.append({"recipe": recipe, "seed": seed, "prompts": prompts} | {k: summary[k] for k in KEPT if k in summary})
                print(json.dumps(rows[-1]), flush=True)
                args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n| recipe | {' | '.join(PROMPT_SETS)} |\n|---|---|---|")
    for recipe in recipes:
        means = [statistics.fmean(r["overall"] for r in rows if r["recipe"] == recipe and r["prompts"] == p) for p in PROMPT_SETS]
        print(f"| {recipe} | {' | '.join(f'{m:.3f}' for m in means)} |")


if __name__ == "__main__":
    main()
