"""A VLM's benchmark scores under other sampling recipes, and two models compared on the same draws.

A better recipe would give RL a better starting policy, but choosing it on the held-out benchmark
would let the benchmark pick the model it then judges. So every recipe is scored on as many of
RL's own prompts as on the benchmark's, under several sampling seeds: choose on ``rl_train``, check
on ``rl_test`` and ``compositional``. Each recipe overrides keys of ``vlm.sampling`` (the seed is the recipe's own plus
0..SEEDS-1). Against an earlier sweep of another model, every (recipe, seed, prompt set) both
scored is paired and the gain's mean and standard error over the seeds reported; one draw moves
the overall by about 2 points, so a gain needs several seeds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selftok.config import PARAMS_FILE, Params, merged, parse_overrides, parse_params, read_params
from selftok.data.scenes import CATEGORIES
from selftok.errors import ConfigError
from selftok.paths import ARMS
from selftok.studies.benchmark import SCORED, Benchmark, reseeded

KEPT = ("overall", "overall_se", "overall_strict", "extra_objects", *CATEGORIES)  # of each score's summary
Row = dict[str, Any]


@dataclass(frozen=True)
class Sweep:
    """What to score: ``model`` (relative to ``root``) under each recipe and ``seeds`` sampling seeds, into ``out``."""

    root: Path
    recipes: list[str]
    out: Path
    model: Path = Path(ARMS["selftok"]["vlm"])
    seeds: int = 2
    against: Path | None = None


def with_sampling(raw: dict[str, Any], recipe: str, seed: int) -> Params:
    """The params with ``recipe`` (comma-separated KEY=VALUE of vlm.sampling) and sampling seed + ``seed``."""
    overrides = parse_overrides([f"vlm.sampling.{item.strip()}" for item in recipe.split(",")])
    return reseeded(parse_params(merged(raw, overrides), f"--recipe {recipe}"), seed)


def paired_gains(rows: list[Row], baseline: list[Row]) -> list[Row]:
    """Per recipe and prompt set of ``rows``: the gain over ``baseline`` in points, paired on the
    sampling seeds both scored (mean and standard error over them; no error from one seed)."""
    before = {(r["recipe"], r["seed"], r["prompts"]): r for r in baseline}
    groups: dict[tuple[str, str], list[tuple[Row, Row]]] = {}
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


def read_sweep(path: Path) -> list[Row]:
    """Rows of an earlier sweep's JSON; names the file when it is not one."""
    try:
        rows = json.loads(path.read_text())
        if not isinstance(rows, list) or not all({"recipe", "seed", "prompts", "overall"} <= set(r) for r in rows):
            raise ValueError("expected a list of rows with recipe, seed, prompts and overall")
    except (OSError, ValueError) as error:
        raise ConfigError(f"--against {path}: not a sweep's JSON ({error})") from None
    return rows


def nothing_in_common(against: Path) -> ConfigError:
    return ConfigError(f"--against {against}: no recipe, seed and prompt set in common with this sweep")


def gains_table(gains: list[Row], against: Path) -> str:
    """The paired gains as Markdown: overall of both models, the gain (± its standard error), per category."""
    lines = [f"| recipe | prompts | seeds | this | {against.name} | gain (points) | {' | '.join(CATEGORIES)} |",
             "|---" * (6 + len(CATEGORIES)) + "|"]
    for g in gains:
        se = "" if g["gain_se_points"] is None else f" ± {g['gain_se_points']:.1f}"
        cells = " | ".join(f"{g['category_gain_points'][c]:+.1f}" if c in g["category_gain_points"] else "-" for c in CATEGORIES)
        lines.append(f"| {g['recipe']} | {g['prompts']} | {len(g['seeds'])} | {g['overall']:.3f} | {g['against']:.3f} | "
                     f"{g['gain_points']:+.1f}{se} | {cells} |")
    return "\n".join(lines) + "\n"


def report_gains(gains: list[Row], out: Path, against: Path) -> str:
    """Write the paired gains to ``out`` and return their table; nothing in common is an error."""
    if not gains:
        raise nothing_in_common(against)
    out.write_text(json.dumps(gains, indent=1) + "\n")
    return gains_table(gains, against)


def means_table(rows: list[Row], recipes: list[str]) -> str:
    """Mean overall per recipe (rows) and prompt set (columns)."""
    lines = [f"| recipe | {' | '.join(SCORED)} |", "|---" * (1 + len(SCORED)) + "|"]
    for recipe in recipes:
        means = [statistics.fmean(r["overall"] for r in rows if r["recipe"] == recipe and r["prompts"] == p) for p in SCORED]
        lines.append(f"| {recipe} | {' | '.join(f'{m:.3f}' for m in means)} |")
    return "\n".join(lines) + "\n"


def plan(sweep: Sweep) -> tuple[dict[str, list[Params]], list[Row] | None]:
    """Every recipe's params per seed and the earlier sweep's rows, checked before the first image is drawn."""
    baseline = read_sweep(sweep.against) if sweep.against else None
    raw = read_params(sweep.root / PARAMS_FILE)
    recipes = {recipe: [with_sampling(raw, recipe, seed) for seed in range(sweep.seeds)] for recipe in sweep.recipes}
    planned = {(recipe, seed, prompts) for recipe in recipes for seed in range(sweep.seeds) for prompts in SCORED}
    if sweep.against is not None and not planned & {(r["recipe"], r["seed"], r["prompts"]) for r in baseline or []}:
        raise nothing_in_common(sweep.against)
    return recipes, baseline


def run(sweep: Sweep, report: Callable[[str], None]) -> list[Row]:
    """Score every recipe, seed and prompt set (each row reported and OUT rewritten as it comes), then the tables."""
    recipes, baseline = plan(sweep)
    bench = Benchmark.load(sweep.root, next(iter(recipes.values()))[0])
    rows: list[Row] = []
    for recipe, seeded in recipes.items():
        for seed, params in enumerate(seeded):
            for prompts in SCORED:
                summary = bench.with_params(params).score(sweep.root / sweep.model, prompts)
                rows.append({"recipe": recipe, "seed": seed, "prompts": prompts} | {k: summary[k] for k in KEPT if k in summary})
                report(json.dumps(rows[-1]))
                sweep.out.write_text(json.dumps(rows, indent=1) + "\n")
    report("\n" + means_table(rows, list(recipes)))
    if baseline is not None and sweep.against is not None:
        report("\n" + report_gains(paired_gains(rows, baseline), sweep.out.with_suffix(".paired.json"), sweep.against))
    return rows
