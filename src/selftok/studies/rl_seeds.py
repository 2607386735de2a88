"""One RL recipe over several RL seeds, each scored on the evaluate stage's benchmark.

RL at this scale is chaotic: one run per recipe says little, so recipes are compared by the mean
and spread of their gains over ``rl.seed``s. The global ``seed`` (which splits train and held-out
prompts) stays the project's, so every run is scored on the same prompts against the same
pretrained model. Each seed runs the real ``rl_finetune@ARM`` stage in OUT/NAME/seed_S, a copy of
the root's params and models with its own MLflow store, then scores the RL model on the benchmark
and on as many of the prompts RL trains on, into OUT/NAME/seed_S/result.json. An interrupted run
resumes from its checkpoints; a finished seed is not run again. OUT/pretrained.json holds the
pretrained model's scores and the data ceiling on both prompt sets, made once; OUT/NAME/summary.json
the gains (mean and sd over the finished seeds) and OUT/NAME/table.md their per-category table.
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
from selftok.hashing import file_hash
from selftok.paths import EVALUATOR
from selftok.stages.arms import ARMS, SELFTOK, Arm
from selftok.stages.base import run_stage
from selftok.studies.benchmark import Benchmark
from selftok.training.checkpoint import latest_checkpoint
from selftok.vlm.benchmark import benchmark_hash, benchmark_sampling
from selftok.vlm.model import SelftokVLM

Report = Callable[[str], None]


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


def _or_dash(value: float | None, spec: str) -> str:
    """A number, or "-" for one not measured (scored before it was, or no steps kept)."""
    return "-" if value is None else format(value, spec)


def _points(gain: dict[str, float], key: str) -> float | None:
    """A gain in points, or None for one scored before it was measured."""
    return gain[key] * 100 if key in gain else None


def _gain_cell(rl: dict[str, Any], gain: float, baseline: dict[str, Any]) -> str:
    """``overall (gain ± its sampling standard error)``; no error for scores saved before it was measured."""
    if "overall_se" not in rl or "overall_se" not in baseline:
        return f"{rl['overall']:.3f} ({gain * 100:+.1f})"
    return f"{rl['overall']:.3f} ({gain * 100:+.1f} ± {math.hypot(rl['overall_se'], baseline['overall_se']) * 100:.1f})"


def _seeds_cell(rl: list[float] | None, pretrained: list[float] | None) -> str:
    """Mean held-out overall over sampling seeds, and its gain over the pretrained model's under
    the same seeds, ± the standard error of the paired differences ("-" when not scored)."""
    if not rl or not pretrained or len(pretrained) < len(rl) or len(rl) < 2:
        return "-"
    diffs = [(a - b) * 100 for a, b in zip(rl, pretrained[: len(rl)], strict=True)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs))
    return f"{statistics.fmean(rl):.3f} ({statistics.fmean(diffs):+.1f} ± {se:.1f}, {len(rl)} seeds)"


def seeds_table(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    """The finished seeds as a Markdown table: score per category, diversity (against that of real
    renders), objects drawn beyond those asked, strict score (held-out and on RL's own prompts),
    distance to real renders, training reward and KL. Headers carry the pretrained model's and the
    data's (real renders through the tokenizer) values where ``baseline`` has them."""
    reference, ceiling = baseline["diversity_reference"], baseline.get("data_ceiling", {})
    train = baseline.get("rl_train", {})
    head = ["rl.seed", f"overall (gain; data {_or_dash(ceiling.get('overall'), '.3f')})", *CATEGORIES,
            f"spread (real {reference['feature_spread']:.2f})", "distinct",
            f"pixel spread (real {_or_dash(reference.get('pixel_spread'), '.3f')})", "extra objects",
            f"strict overall (pretrained {_or_dash(baseline.get('overall_strict'), '.3f')}; data "
            f"{_or_dash(ceiling.get('overall_strict'), '.3f')})",
            f"strict on RL prompts (pretrained {_or_dash(train.get('overall_strict'), '.3f')}; data "
            f"{_or_dash(train.get('data_ceiling', {}).get('overall_strict'), '.3f')})",
            "Frechet to real", "train reward first → last 5", "KL last 5", "last weights overall / strict (if not kept)",
            "overall over sampling seeds (gain ± se)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        stage, rl = r["stage"]["rl"], r["rl"]
        selected = r["stage"].get("validation", {}).get("selected_step")
        notes = [*([f"guard: stopped at {stage['collapsed_at']}"] if stage["collapsed_at"] is not None else []),
                 *([f"best on validation: step {selected}"] if selected is not None else [])]
        seed = f"{r['seed']} ({', '.join(notes)}, kept {stage['steps']})" if notes else str(r["seed"])
        kl = stage["kl_exact_last5"] if stage.get("kl_exact_last5") is not None else stage["kl_last5"]
        cells = [seed, _gain_cell(rl, r["gain"]["overall"], baseline), *(f"{rl[c]:.3f}" for c in CATEGORIES),
                 f"{rl['diversity']['feature_spread']:.2f}", f"{rl['diversity']['distinct_codes']:.1%}",
                 _or_dash(rl["diversity"].get("pixel_spread"), ".3f"), _or_dash(rl.get("extra_objects"), ".2f"),
                 _or_dash(rl.get("overall_strict"), ".3f"), _or_dash(r.get("rl_train_prompts", {}).get("overall_strict"), ".3f"),
                 _or_dash(rl.get("frechet_to_real"), ".1f"),
                 f"{_or_dash(stage['reward_first5'], '.2f')} → {_or_dash(stage['reward_last5'], '.2f')}", _or_dash(kl, ".1f"),
                 f"{r['rl_last']['overall']:.3f} / {r['rl_last']['overall_strict']:.3f}" if "rl_last" in r else "-",
                 _seeds_cell(r.get("overall_by_seed"), baseline.get("overall_by_seed"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summarize(out: Path) -> dict[str, Any]:
    """Gains of the finished seeds under ``out`` (points: per seed, mean, sample sd); writes table.md beside."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("seed_*/result.json"), key=lambda p: int(p.parent.name[5:]))]
    (out / "table.md").write_text(seeds_table(rows, json.loads((out.parent / "pretrained.json").read_text())))
    gains = [r["gain"]["overall"] * 100 for r in rows]
    return {
        "seeds": [r["seed"] for r in rows],
        "gain_points": gains,
        "mean": statistics.fmean(gains) if gains else None,
        "sd": statistics.stdev(gains) if len(gains) > 1 else None,
        "strict_gain_points": [_points(r["gain"], "overall_strict") for r in rows],
        "strict_gain_points_rl_prompts": [_points(r.get("gain_train_prompts", {}), "overall_strict") for r in rows],
        "feature_spread": [r["rl"]["diversity"]["feature_spread"] for r in rows],
        "distinct_codes": [r["rl"]["diversity"]["distinct_codes"] for r in rows],
        "pixel_spread": [r["rl"]["diversity"].get("pixel_spread") for r in rows],
        "extra_objects": [r["rl"].get("extra_objects") for r in rows],
        "overall_strict": [r["rl"].get("overall_strict") for r in rows],
        "frechet_to_real": [r["rl"].get("frechet_to_real") for r in rows],
        "collapsed_at": [r["stage"]["rl"]["collapsed_at"] for r in rows],
    }


def pretrained_scores(study: SeedsStudy, bench: Benchmark, params: Params) -> dict[str, Any]:
    """OUT/pretrained.json: the pretrained model's scores and the data ceiling, made once per benchmark
    and pretrained model (another benchmark or model in the same OUT is refused)."""
    root, arm = study.root, ARMS[study.arm]
    sampling = benchmark_sampling(params.vlm.sampling, params.evaluate.samples_per_prompt)
    pinned = {"benchmark": benchmark_hash(bench.sets["compositional"].records, sampling, root / EVALUATOR),
              "pretrained_sha256": file_hash(root / arm.vlm)}
    baseline_file = study.out / "pretrained.json"
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else dict(pinned)
    if {k: baseline.get(k) for k in pinned} != pinned:
        raise ConfigError(f"{baseline_file}: scored on another benchmark or pretrained model than {root}'s; use another --out")
    if "rl_train" not in baseline:
        baseline |= {**bench.score(root / arm.vlm), **bench.reference(),
                     "rl_train": {**bench.score(root / arm.vlm, "rl_train"), **bench.reference("rl_train")}}
    if study.sample_seeds > len(baseline.get("overall_by_seed", [])):
        baseline["overall_by_seed"] = bench.overall_by_seed(root / arm.vlm, study.sample_seeds)
    baseline_file.parent.mkdir(parents=True, exist_ok=True)
    baseline_file.write_text(json.dumps(baseline, indent=1) + "\n")
    return baseline


def run_seed(study: SeedsStudy, seed: int, raw: dict[str, Any], bench: Benchmark, baseline: dict[str, Any]) -> dict[str, Any]:
    """One RL seed: the real stage in its own folder, then its scores and gains (also written to result.json)."""
    arm, work = ARMS[study.arm], (study.out / study.name / f"seed_{seed}").resolve()
    workdir(study.root, work, merged(raw, {"rl": {"seed": seed}}), arm)
    started = time.perf_counter()
    stage = run_stage(f"rl_finetune@{arm.name}", work)
    rl_seconds = time.perf_counter() - started
    rl, rl_train = bench.score(work / arm.vlm_rl), bench.score(work / arm.vlm_rl, "rl_train")
    gain = {k: rl[k] - baseline[k] for k in (*CATEGORIES, "overall", "overall_strict") if k in rl and k in baseline}
    gain_train = {k: rl_train[k] - baseline["rl_train"][k] for k in ("overall", "overall_strict")}
    result = {"name": study.name, "seed": seed, "sets": study.sets, "rl_seconds": rl_seconds, "gain": gain,
              "gain_train_prompts": gain_train, "rl": rl, "rl_train_prompts": rl_train, "pretrained": baseline, "stage": stage}
    if stage.get("validation", {}).get("selected_step") is not None:  # what the selection passed over
        result["rl_last"] = bench.score(last_weights(work, arm))
    if study.sample_seeds > 1:
        result["overall_by_seed"] = bench.overall_by_seed(work / arm.vlm_rl, study.sample_seeds)
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


def run(study: SeedsStudy, report: Report) -> dict[str, Any]:
    """Every seed not done before, then the summary over all finished seeds (also OUT/NAME/summary.json)."""
    raw, params = study.recipe()
    bench = Benchmark.load(study.root, params, ARMS[study.arm])
    baseline = pretrained_scores(study, bench, params)
    for seed in study.seeds:
        if finished(study, seed):
            report(f"seed {seed}: done before ({study.out / study.name / f'seed_{seed}' / 'result.json'})")
            continue
        result = run_seed(study, seed, raw, bench, baseline)
        rl = result["rl"]
        report(f"seed {seed}: overall {baseline['overall']:.3f} -> {rl['overall']:.3f} ({result['gain']['overall'] * 100:+.1f} "
               f"points), spread {rl['diversity']['feature_spread']:.2f}, {result['rl_seconds']:.0f} s")
    summary = summarize(study.out / study.name)
    (study.out / study.name / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
