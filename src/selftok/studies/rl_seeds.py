"""One RL recipe over several RL seeds, each scored on the evaluate stage's benchmark.

RL at this scale is chaotic: one run per recipe says little, so recipes are compared by the mean
and spread of their gains over ``rl.seed``s. The global ``seed`` (which splits train and held-out
prompts) stays the project's, so every run is scored on the same prompts against the same
pretrained model. Each seed runs the real ``rl_finetune@ARM`` stage in OUT/NAME/seed_S, a copy of
the root's params and models with its own MLflow store, then scores the RL model on the evaluate
stage's benchmark sets (``rl_test``, the headline, and ``compositional``) under ``--sample-seeds``
sampling seeds, and on as many of the prompts RL trains on (``rl_train``) under the recipe's own,
into OUT/NAME/seed_S/result.json. One draw of images moves a score by about 2 points, so each seed's
gain is paired with the pretrained model on the same sampling seeds (the gain per sampling seed,
then its mean); the evaluator (RL's reward) and the independent second judge score the same images,
since a gain only the reward's evaluator sees is a hack. An interrupted run resumes from its
checkpoints; a finished seed is not run again (a seed done under fewer sampling seeds gets the
missing draws). OUT/pretrained.json holds the pretrained model's scores and the data ceiling on
every set, made once per benchmark (RL's own prompts once per recipe that moves them; added to
where more sampling seeds are asked); OUT/NAME/summary.json the gains per set (mean and standard error over the
finished seeds, each seed's, the judge's) with the protocol's bars, and OUT/NAME/table.md the table.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

from selftok.config import PARAMS_FILE, Params, merged, parse_overrides, parse_params, read_params
from selftok.data.scenes import CATEGORIES
from selftok.errors import ConfigError
from selftok.eval.geneval import BENCHMARK_SETS
from selftok.hashing import file_hash
from selftok.paths import EVALUATOR, JUDGE
from selftok.stages.arms import ARMS, SELFTOK, Arm
from selftok.stages.base import run_stage
from selftok.studies.benchmark import SCORED, Benchmark
from selftok.training.checkpoint import latest_checkpoint
from selftok.vlm.benchmark import benchmark_hash, benchmark_sampling
from selftok.vlm.model import SelftokVLM

Report = Callable[[str], None]
HEADLINE = "rl_test"  # the paper's protocol: the issue's bars are on this set
GAIN_KEYS = ("overall", "overall_strict", "judge_overall", "judge_overall_strict")
OVERALL_BAR, STRICT_BAR, SEED_STRICT_BAR = 15.0, 10.0, 5.0  # points: mean overall, mean strict, every seed's strict
JUDGE_GAP = 5.0  # points: the judge's gain is of the same sign and at most this far from the evaluator's
NO_LOSS_SES = 2.0  # compositional: no loss beyond this many standard errors (over seeds) of the mean gain


@dataclass(frozen=True)
class SeedsStudy:
    """What to run: the recipe (``sets``: KEY=VALUE overrides of the root's params) under ``name``, per RL seed."""

    root: Path
    name: str
    seeds: list[int]
    sets: list[str] = field(default_factory=list)
    out: Path = Path("ablation_runs/rl")
    arm: str = SELFTOK.name
    sample_seeds: int = 1

    def recipe(self) -> tuple[dict[str, Any], Params]:
        """The root's params with the overrides, raw and checked; a bad key fails here, before any work."""
        if self.arm not in ARMS:
            raise ConfigError(f"--arm {self.arm!r}: known arms are {', '.join(sorted(ARMS))}")
        if self.sample_seeds < 1:
            raise ConfigError(f"--sample-seeds {self.sample_seeds}: a gain needs at least one draw of images")
        raw = merged(read_params(self.root / PARAMS_FILE), parse_overrides(self.sets))
        return raw, parse_params(raw, f"{self.root / PARAMS_FILE} with {' '.join(self.sets)}")


def graph_files(root: Path) -> list[str]:
    """dvc.yaml and the files it reads its ``vars`` from (the stage graph cannot be resolved without them)."""
    declared = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("vars", [])
    return ["dvc.yaml", *(item.partition(":")[0] for item in declared if isinstance(item, str))]


def workdir(root: Path, work: Path, raw: dict[str, Any], arm: Arm) -> None:
    """A project folder holding only what the arm's RL stage reads: params, the stage graph, its models and codes."""
    copied = (*graph_files(root), arm.vlm, arm.codes, arm.tokenizer, *([arm.renderer] if arm.renderer else []), EVALUATOR)
    for item in copied:
        source, target = root / item, work / item
        if not source.exists():
            raise FileNotFoundError(f"{source}: missing; run the pipeline up to pretrain_vlm@{arm.name} on {root} first")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    (work / PARAMS_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))


def last_weights(work: Path, arm: Arm) -> Path:
    """The RL model with the weights of the run's last checkpoint (where validation kept an
    earlier step's), saved beside it, so the selection can be judged on the benchmark."""
    checkpoint = latest_checkpoint(work / arm.rl_checkpoints)
    if checkpoint is None:
        raise FileNotFoundError(f"{work / arm.rl_checkpoints}: no checkpoint")
    vlm = SelftokVLM.from_pretrained(work / arm.vlm_rl)
    vlm.lm.load_state_dict(load_file(str(checkpoint / "model.safetensors")))
    target = work / f"{arm.vlm_rl}_{checkpoint.name}"
    vlm.save_pretrained(target)
    return target


def sample_seeds(study: SeedsStudy, prompts: str) -> int:
    """Sampling seeds a set is scored under: ``--sample-seeds`` on the benchmark sets, the recipe's
    own on RL's prompts (a diagnostic, not a bar)."""
    return study.sample_seeds if prompts in BENCHMARK_SETS else 1


def _value(summary: dict[str, Any], key: str) -> float:
    """A score of one draw by key; ``judge_overall`` is the second judge's ``overall`` of the same images."""
    return summary["judge"][key.removeprefix("judge_")] if key.startswith("judge_") else summary[key]


def paired_points(rl: list[dict[str, Any]], pretrained: list[dict[str, Any]], key: str) -> list[float]:
    """RL minus pretrained in points, per sampling seed both were scored under (the same images'
    draw for both, so the draw's own luck cancels)."""
    n = min(len(rl), len(pretrained))
    return [(_value(a, key) - _value(b, key)) * 100 for a, b in zip(rl[:n], pretrained[:n], strict=True)]


def _paired_se(diffs: list[float], rl: dict[str, Any], pretrained: dict[str, Any], key: str) -> float | None:
    """Standard error (points) of a mean paired gain: over sampling seeds where there are several,
    else from the two draws' own sampling errors (None where not measured)."""
    if len(diffs) > 1:
        return statistics.stdev(diffs) / math.sqrt(len(diffs))
    se = f"{key}_se"
    return math.hypot(rl[se], pretrained[se]) * 100 if se in rl and se in pretrained else None


def seed_gain(rl: list[dict[str, Any]], pretrained: list[dict[str, Any]]) -> dict[str, Any]:
    """One RL seed's gain on a set (points): per sampling seed, their mean, its standard error,
    and by the second judge where it scored; per category, the mean over sampling seeds."""
    keys = [k for k in GAIN_KEYS if not k.startswith("judge_") or all("judge" in s for s in (*rl, *pretrained))]
    by_seed = {k: paired_points(rl, pretrained, k) for k in keys}
    gain: dict[str, Any] = {k: statistics.fmean(v) for k, v in by_seed.items()}
    gain |= {f"{k}_se": _paired_se(by_seed[k], rl[0], pretrained[0], k) for k in ("overall", "overall_strict")}
    gain["categories"] = {c: statistics.fmean(paired_points(rl, pretrained, c)) for c in CATEGORIES if c in rl[0] and c in pretrained[0]}
    return gain | {"by_sample_seed": by_seed, "sample_seeds": len(by_seed["overall"])}


def mean_se(values: list[float]) -> dict[str, Any]:
    """Mean over RL seeds with its standard error (sd / sqrt(n); None under two seeds), and each seed's value."""
    return {"mean": statistics.fmean(values) if values else None,
            "se": statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None, "per_seed": values}


def _sign(x: float) -> int:
    """-1, 0 or 1: the judges agree in sign only where both see a loss, both a gain, or both none."""
    return (x > 0) - (x < 0)


def bars(prompts: str, gains: dict[str, dict[str, Any]]) -> dict[str, bool | None]:
    """The protocol's bars on a set's gains over RL seeds: on ``rl_test`` the mean gains, every
    seed's strict gain and the judges' agreement; on ``compositional`` no loss beyond 2 standard
    errors (None: fewer than two seeds, no error to judge by). Other sets have none."""
    overall, strict = gains["overall"], gains["overall_strict"]
    if not overall["per_seed"] or prompts not in BENCHMARK_SETS:
        return {}
    if prompts == "compositional":
        checked = None if overall["se"] is None else overall["mean"] >= -NO_LOSS_SES * overall["se"]
        return {"no_loss_beyond_2se": checked, "met": checked}
    judge = gains.get("judge_overall", {}).get("mean")
    checks: dict[str, bool | None] = {
        "overall_gain_at_least_15": overall["mean"] >= OVERALL_BAR, "strict_gain_at_least_10": strict["mean"] >= STRICT_BAR,
        "every_seed_strict_at_least_5": all(g >= SEED_STRICT_BAR for g in strict["per_seed"]),
        "judges_agree": None if judge is None else
        _sign(overall["mean"]) == _sign(judge) and abs(overall["mean"] - judge) <= JUDGE_GAP}
    return checks | {"met": None if None in checks.values() else all(checks.values())}


def set_summary(prompts: str, gains: list[dict[str, Any]]) -> dict[str, Any]:
    """One prompt set over RL seeds: each gain's mean, standard error and per-seed values (points), and the bars."""
    summary = {k: mean_se([g[k] for g in gains]) for k in GAIN_KEYS if all(k in g for g in gains)}
    return summary | {"bars": bars(prompts, summary)}


def _or_dash(value: float | None, spec: str) -> str:
    """A number, or "-" for one not measured (no steps kept, no second draw)."""
    return "-" if value is None else format(value, spec)


def _mean_of(runs: list[dict[str, Any]], key: str) -> float:
    """A score's mean over the sampling seeds a model was scored under."""
    return statistics.fmean(_value(r, key) for r in runs)


def _gain_cell(score: float, gain: float, se: float | None) -> str:
    """``score (gain ± standard error)``, the gain in points."""
    return f"{score:.3f} ({gain:+.1f}{'' if se is None else f' ± {se:.1f}'})"


def _head(prompts: str, key: str, baseline: dict[str, Any]) -> str:
    """A score's column header with the pretrained model's value and the data's (real renders through the tokenizer)."""
    entry, label = baseline["sets"].get(prompts), "overall" if key == "overall" else "strict"
    if entry is None:
        return f"{prompts} {label}"
    return (f"{prompts} {label} (pretrained {_mean_of(entry['scores'], key):.3f}; "
            f"data {_or_dash(entry['data_ceiling'].get(key), '.3f')})")


def seed_row(r: dict[str, Any]) -> list[str]:
    """One finished seed's cells: per benchmark set overall and strict (gain ± se over sampling
    seeds) and the judge's gains, strict on RL's own prompts, rl_test diversity, extra objects and
    distance to real renders, training reward and KL, and the last weights where the selection kept others."""
    stage, selected = r["stage"]["rl"], r["stage"].get("validation", {}).get("selected_step")
    notes = [*([f"guard: stopped at {stage['collapsed_at']}"] if stage["collapsed_at"] is not None else []),
             *([f"best on validation: step {selected}"] if selected is not None else [])]
    cells = [f"{r['seed']} ({', '.join(notes)}, kept {stage['steps']})" if notes else str(r["seed"])]
    for prompts in BENCHMARK_SETS:
        runs, gain = r["scores"][prompts], r["gain"][prompts]
        cells += [_gain_cell(_mean_of(runs, k), gain[k], gain[f"{k}_se"]) for k in ("overall", "overall_strict")]
        cells.append(f"{_or_dash(gain.get('judge_overall'), '+.1f')} / {_or_dash(gain.get('judge_overall_strict'), '+.1f')}")
    train, head = r["scores"]["rl_train"], r["scores"][HEADLINE][0]
    kl = stage["kl_exact_last5"] if stage.get("kl_exact_last5") is not None else stage["kl_last5"]
    return [*cells, _gain_cell(_mean_of(train, "overall_strict"), r["gain"]["rl_train"]["overall_strict"], None),
            f"{head['diversity']['feature_spread']:.2f}", _or_dash(head.get("extra_objects"), ".2f"),
            _or_dash(head.get("frechet_to_real"), ".1f"),
            f"{_or_dash(stage['reward_first5'], '.2f')} → {_or_dash(stage['reward_last5'], '.2f')}", _or_dash(kl, ".1f"),
            f"{r['rl_last']['overall']:.3f} / {r['rl_last']['overall_strict']:.3f}" if "rl_last" in r else "-"]


def mean_row(summary: dict[str, Any], width: int) -> list[str]:
    """The mean over RL seeds of each gain ± its standard error over seeds, the bars' verdict beside."""
    cells = [f"mean ({len(summary['seeds'])} seeds)"]
    for prompts in BENCHMARK_SETS:
        gains, met = summary[prompts], summary[prompts]["bars"].get("met")
        cells += [f"{gains[k]['mean']:+.1f}" + ("" if gains[k]["se"] is None else f" ± {gains[k]['se']:.1f}")
                  for k in ("overall", "overall_strict")]
        judge = [gains.get(k, {}).get("mean") for k in ("judge_overall", "judge_overall_strict")]
        cells.append(f"{_or_dash(judge[0], '+.1f')} / {_or_dash(judge[1], '+.1f')} (bars {'-' if met is None else 'met' if met else 'missed'})")
    return cells + [""] * (width - len(cells))


def seeds_table(rows: list[dict[str, Any]], summary: dict[str, Any], baseline: dict[str, Any]) -> str:
    """The finished seeds as a Markdown table, one row per seed and the mean row; headers carry the
    pretrained model's and the data's values."""
    reference = baseline["sets"][HEADLINE]["diversity_reference"]["feature_spread"]
    if rows:  # RL's own prompts are the recipe's: the pretrained scores the seeds were paired with
        baseline = baseline | {"sets": baseline["sets"] | {"rl_train": rows[0]["pretrained_rl_train"]}}
    head = ["rl.seed"]
    for prompts in BENCHMARK_SETS:
        head += [_head(prompts, "overall", baseline), _head(prompts, "overall_strict", baseline), f"{prompts} judge gain overall / strict"]
    head += [_head("rl_train", "overall_strict", baseline).replace("rl_train strict", "strict on RL prompts"),
             f"{HEADLINE} spread (real {reference:.2f})", "extra objects", "Frechet to real", "train reward first → last 5",
             "KL last 5", f"last weights {HEADLINE} overall / strict (if not kept)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(seed_row(r)) + " |" for r in rows]
    if rows:
        lines.append("| " + " | ".join(mean_row(summary, len(head))) + " |")
    return "\n".join(lines) + "\n"


def summarize(out: Path) -> dict[str, Any]:
    """Gains of the finished seeds under ``out`` per prompt set (points: mean, standard error over
    seeds, per seed, the judge's) with the bars; writes table.md beside."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("seed_*/result.json"), key=lambda p: int(p.parent.name[5:]))]
    head = [r["scores"][HEADLINE][0] for r in rows]
    summary: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "headline": HEADLINE,
                               **{prompts: set_summary(prompts, [r["gain"][prompts] for r in rows]) for prompts in SCORED}}
    summary["bars_met"] = {prompts: summary[prompts]["bars"].get("met") for prompts in BENCHMARK_SETS}
    summary[HEADLINE + "_diagnostics"] = {
        "feature_spread": [h["diversity"]["feature_spread"] for h in head], "distinct_codes": [h["diversity"]["distinct_codes"] for h in head],
        "pixel_spread": [h["diversity"].get("pixel_spread") for h in head], "extra_objects": [h.get("extra_objects") for h in head],
        "frechet_to_real": [h.get("frechet_to_real") for h in head], "collapsed_at": [r["stage"]["rl"]["collapsed_at"] for r in rows]}
    (out / "table.md").write_text(seeds_table(rows, summary, json.loads((out.parent / "pretrained.json").read_text())))
    return summary


def set_hashes(study: SeedsStudy, bench: Benchmark, params: Params) -> dict[str, str]:
    """Per scored set, what makes its scores comparable: its prompts, the sampling recipe and the
    evaluator (``benchmark_hash``)."""
    sampling = benchmark_sampling(params.vlm.sampling, params.evaluate.samples_per_prompt)
    return {name: benchmark_hash(bench.sets[name].records, sampling, study.root / EVALUATOR) for name in SCORED}


def pretrained_scores(study: SeedsStudy, bench: Benchmark, params: Params) -> dict[str, Any]:
    """OUT/pretrained.json: the pretrained model's scores per set and sampling seed and the data
    ceiling, made once per benchmark (both benchmark sets, the second judge) and pretrained model;
    another in the same OUT is refused. RL's own prompts move with the recipe (``geneval.select_fraction``),
    so their scores are kept per prompt hash; more sampling seeds are added, the ones scored kept.
    Returns it with ``sets.rl_train`` the recipe's."""
    hashes, baseline_file = set_hashes(study, bench, params), study.out / "pretrained.json"
    pinned = {"benchmark": {name: hashes[name] for name in BENCHMARK_SETS}, "judge_sha256": file_hash(study.root / JUDGE),
              "pretrained_sha256": file_hash(study.root / ARMS[study.arm].vlm)}
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else dict(pinned)
    if {k: baseline.get(k) for k in pinned} != pinned:
        raise ConfigError(f"{baseline_file}: scored on another benchmark (rl_test and compositional), judge or pretrained "
                          f"model than {study.root}'s; use another --out")
    baseline_file.parent.mkdir(parents=True, exist_ok=True)
    for prompts in SCORED:
        benchmark = prompts in BENCHMARK_SETS
        store = baseline.setdefault("sets" if benchmark else "rl_train_by_prompts", {})
        key = prompts if benchmark else hashes[prompts]
        if key not in store:  # the data ceiling takes a while: made once per set
            store[key] = {"scores": [], **bench.reference(prompts)}
        entry = store[key]
        entry["scores"] += bench.score_seeds(study.root / ARMS[study.arm].vlm, prompts,
                                             range(len(entry["scores"]), sample_seeds(study, prompts)))
        baseline_file.write_text(json.dumps(baseline, indent=1) + "\n")  # a set at a time: an interrupted run keeps them
    return baseline | {"sets": baseline["sets"] | {"rl_train": baseline["rl_train_by_prompts"][hashes["rl_train"]]}}


def run_seed(study: SeedsStudy, seed: int, raw: dict[str, Any], bench: Benchmark, baseline: dict[str, Any]) -> dict[str, Any]:
    """One RL seed: the real stage in its own folder, then its scores per set and sampling seed and
    its paired gains over the pretrained model (also written to result.json)."""
    arm, work = ARMS[study.arm], (study.out / study.name / f"seed_{seed}").resolve()
    workdir(study.root, work, merged(raw, {"rl": {"seed": seed}}), arm)
    started = time.perf_counter()
    stage = run_stage(f"rl_finetune@{arm.name}", work)
    rl_seconds = time.perf_counter() - started
    scores = {prompts: bench.score_seeds(work / arm.vlm_rl, prompts, range(sample_seeds(study, prompts))) for prompts in SCORED}
    gain = {prompts: seed_gain(scores[prompts], baseline["sets"][prompts]["scores"]) for prompts in SCORED}
    result = {"name": study.name, "seed": seed, "sets": study.sets, "rl_seconds": rl_seconds, "gain": gain,
              "scores": scores, "pretrained_rl_train": baseline["sets"]["rl_train"], "stage": stage}
    if stage.get("validation", {}).get("selected_step") is not None:  # what the selection passed over
        result["rl_last"] = bench.score(last_weights(work, arm), HEADLINE)
    (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def finished(study: SeedsStudy, seed: int) -> bool:
    """Whether the seed has its result already; one made with other overrides is refused."""
    result = study.out / study.name / f"seed_{seed}" / "result.json"
    if not result.is_file():
        return False
    if json.loads(result.read_text())["sets"] != study.sets:
        raise ConfigError(f"{result}: made with other --set values; use another --name")
    return True


def top_up(study: SeedsStudy, seed: int, bench: Benchmark, baseline: dict[str, Any]) -> int:
    """A seed done before under fewer sampling seeds than now asked: its RL model's missing draws
    and its gains again, so that no seed's gain in the summary rests on fewer draws than asked.
    Returns how many draws were added."""
    path = study.out / study.name / f"seed_{seed}" / "result.json"
    result = json.loads(path.read_text())
    missing = {p: range(len(result["scores"][p]), sample_seeds(study, p)) for p in SCORED}
    if not any(missing.values()):
        return 0
    for prompts, draws in missing.items():
        result["scores"][prompts] += bench.score_seeds(path.parent.resolve() / ARMS[study.arm].vlm_rl, prompts, draws)
        result["gain"][prompts] = seed_gain(result["scores"][prompts], baseline["sets"][prompts]["scores"])
    path.write_text(json.dumps(result, indent=1) + "\n")
    return sum(map(len, missing.values()))


def run(study: SeedsStudy, report: Report) -> dict[str, Any]:
    """Every seed not done before, then the summary over all finished seeds (also OUT/NAME/summary.json)."""
    raw, params = study.recipe()
    done = [seed for seed in study.seeds if finished(study, seed)]  # other --set values: refused before minutes of loading
    bench = Benchmark.load(study.root, params, ARMS[study.arm], judged=True)
    baseline = pretrained_scores(study, bench, params)
    for seed in study.seeds:
        if seed in done:
            added = top_up(study, seed, bench, baseline)
            report(f"seed {seed}: done before ({study.out / study.name / f'seed_{seed}' / 'result.json'})"
                   + (f"; {added} more draws of its RL model scored" if added else ""))
            continue
        result = run_seed(study, seed, raw, bench, baseline)
        gains = ", ".join(f"{p} {g['overall']:+.1f} (strict {g['overall_strict']:+.1f}, judge {_or_dash(g.get('judge_overall'), '+.1f')})"
                          for p, g in result["gain"].items() if p in BENCHMARK_SETS)
        report(f"seed {seed}: gain in points over {study.sample_seeds} sampling seeds: {gains}; {result['rl_seconds']:.0f} s")
    summary = summarize(study.out / study.name)
    (study.out / study.name / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
