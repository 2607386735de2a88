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

Two models are compared on the same draws: sweep one, then sweep the other with `--against` the
first sweep's JSON. Every (recipe, seed, prompt set) both scored is paired, and the gain's mean and
standard error over the seeds, overall and per category, are printed and written beside OUT as
OUT.paired.json. One draw moves the overall by about 2 points, so a gain needs several seeds:

    python scripts/sampling_sweep.py --root big --out big.json --seeds 8 --recipe cfg_scale=3 \
        --against small.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from rl_seeds import Benchmark, reseeded

from selftok.config import PARAMS_FILE, Params, merged, parse_overrides, parse_params, read_params
from selftok.data.scenes import CATEGORIES
from selftok.errors import ConfigError

PROMPT_SETS = ("train", "heldout")
KEPT = ("overall", "overall_se", "overall_strict", "extra_objects", *CATEGORIES)  # of each score's summary


def with_sampling(raw: dict, recipe: str, seed: int) -> Params:
    """The params with ``recipe`` (comma-separated KEY=VALUE of vlm.sampling) and sampling seed + ``seed``."""
    overrides = parse_overrides([f"vlm.sampling.{item.strip()}" for item in recipe.split(",")])
    return reseeded(parse_params(merged(raw, overrides), f"--recipe {recipe}"), seed)


def paired_gains(rows: list[dict], baseline: list[dict]) -> list[dict]:
    """Per recipe and prompt set of ``rows``: the gain over ``baseline`` in points, paired on the
    sampling seeds both scored (mean and standard error over them; no error from one seed)."""
    before = {(r["recipe"], r["seed"], r["prompts"]): r for r in baseline}
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for r in rows:
        if (old := before.get((r["recipe"], r["seed"], r["prompts"]))) is not None:
            groups.setdefault((r["recipe"], r["prompts"]), []).append((r, old))
    gains = []
    for (recipe, prompts), pairs in groups.items():
        diffs = [100 * (new["overall"] - old["overall"]) for new, old in pairs]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
        per_category = {c: 100 * statistics.fmean(new[c] - old[c] for new, old in pairs) for c in CATEGORIES
                        if all(c in new and c in old for new, old in pairs)}
        gains.append({"recipe": recipe, "prompts": prompts, "seeds": sorted(new["seed"] for new, _ in pairs),
                      "overall": statistics.fmean(new["overall"] for new, _ in pairs),
                      "against": statistics.fmean(old["overall"] for _, old in pairs),
                      "gain_points": statistics.fmean(diffs), "gain_se_points": se, "category_gain_points": per_category})
    return gains


def read_sweep(path: Path) -> list[dict]:
    """Rows of an earlier sweep's JSON; names the file when it is not one."""
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not all({"recipe", "seed", "prompts", "overall"} <= set(r) for r in rows):
            raise ValueError("expected a list of rows with recipe, seed, prompts and overall")
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: --against {path}: not a sweep's JSON ({error})") from None
    return rows


def nothing_in_common(against: Path) -> SystemExit:
    return SystemExit(f"error: --against {against}: no recipe, seed and prompt set in common with this sweep")


def report_gains(gains: list[dict], out: Path, against: Path) -> None:
    """The paired table on stdout and in ``out``; no shared (recipe, seed, prompt set) is an error."""
    if not gains:
        raise nothing_in_common(against)
    out.write_text(json.dumps(gains, indent=1) + "\n")
    print(f"\n| recipe | prompts | seeds | this | {against.name} | gain (points) | {' | '.join(CATEGORIES)} |")
    print("|---" * (6 + len(CATEGORIES)) + "|")
    for g in gains:
        se = "" if g["gain_se_points"] is None else f" ± {g['gain_se_points']:.1f}"
        cells = " | ".join(f"{g['category_gain_points'][c]:+.1f}" if c in g["category_gain_points"] else "-" for c in CATEGORIES)
        print(f"| {g['recipe']} | {g['prompts']} | {len(g['seeds'])} | {g['overall']:.3f} | {g['against']:.3f} | "
              f"{g['gain_points']:+.1f}{se} | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project with models/vlm, its tokenizer and evaluator")
    ap.add_argument("--model", type=Path, default=Path("models/vlm"), help="the VLM folder, relative to the root")
    ap.add_argument("--recipe", action="append", required=True, help="KEY=VALUE[,KEY=VALUE] of vlm.sampling, e.g. cfg_scale=7")
    ap.add_argument("--seeds", type=int, default=2, help="sampling seeds per recipe")
    ap.add_argument("--out", type=Path, required=True, help="JSON file of the scores")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--against", type=Path, help="an earlier sweep's JSON (another model): print paired gains over it")
    args = ap.parse_args()
    baseline = read_sweep(args.against) if args.against else None
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root.resolve()
    raw = read_params(root / PARAMS_FILE)
    try:  # every recipe is checked before the first image is drawn
        recipes = {recipe: [with_sampling(raw, recipe, seed) for seed in range(args.seeds)] for recipe in args.recipe}
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    planned = {(recipe, seed, prompts) for recipe in recipes for seed in range(args.seeds) for prompts in PROMPT_SETS}
    if baseline is not None and not planned & {(r["recipe"], r["seed"], r["prompts"]) for r in baseline}:
        raise nothing_in_common(args.against)  # before any image is drawn
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
    if baseline is not None:
        report_gains(paired_gains(rows, baseline), args.out.with_suffix(".paired.json"), args.against)


if __name__ == "__main__":
    main()
