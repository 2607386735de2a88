"""One RL recipe over several RL seeds, each scored on the same held-out benchmark (docs/rl_finetune.md).

RL at this scale is chaotic: one run per recipe says little, so recipes are compared by the mean
and spread of their gains over `rl.seed`s. The global `seed` (which splits train and held-out
prompts) stays the project's, so every run is scored on the same prompts against the same
pretrained model. Run it on a project where the pipeline has made models/evaluator and
models/vlm (e.g. after `selftok run`):

    python scripts/rl_seeds.py --root . --name g24_exact --seeds 0 1 2 --threads 1 \\
        --set rl.group_size=24 --set rl.kl_estimator=exact --set rl.beta=0.01

Each seed runs the real `rl_finetune@ARM` stage (`--arm`, Selftok by default; the spatial control
arm needs its own OUT) in OUT/NAME/seed_S, a copy of the root's
params and models with its own MLflow store, then scores the RL model with the evaluate stage's
benchmark and, the same way, on as many of the prompts RL trains on, and writes
OUT/NAME/seed_S/result.json. An interrupted run resumes from its checkpoints; a finished seed is
not run again. OUT/pretrained.json holds the pretrained model's scores and the data ceiling
(real renders through the tokenizer, scored like a model) on both prompt sets, made once;
OUT/NAME/summary.json the gains (mean and sd over the finished seeds) and OUT/NAME/table.md
their per-category table.

One draw of images moves the held-out overall by about 2 points (its `overall_se`), as much as
many recipe effects. `--sample-seeds K` also scores the pretrained and each RL model under K
sampling seeds and reports the mean paired gain with its standard error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from selftok.config import PARAMS_FILE, Params, merged, parse_overrides, parse_params, read_params
from selftok.data.scenes import CATEGORIES
from selftok.errors import ConfigError
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.geneval import Record, prompt_sets
from selftok.stages.arms import ARMS, SELFTOK, Arm
from selftok.stages.base import run_stage
from selftok.stages.evaluate import (
    benchmark_generation,
    benchmark_hash,
    benchmark_renders,
    benchmark_sampling,
    data_ceiling,
    reference_diversity,
)
from selftok.stages.pretrain_vlm import heldout_records
from selftok.stages.rl_finetune import EVALUATOR
from selftok.tokenizer.checkpoint import latest_checkpoint
from selftok.tracking import file_hash
from selftok.vlm.decode import reference_images, render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.scores import DecodeFn, per_category


def reseeded(params: Params, offset: int) -> Params:
    """``params`` with the sampling seed moved by ``offset``: another draw of the same recipe."""
    sampling = params.vlm.sampling
    vlm = params.vlm.model_copy(update={"sampling": sampling.model_copy(update={"seed": sampling.seed + offset})})
    return params.model_copy(update={"vlm": vlm})


@dataclass(frozen=True)
class PromptSet:
    """Prompts to score on, with their real renders through the tokenizer and those renders' evaluator features."""

    records: list[Record]
    real: torch.Tensor  # reference_images, prompt-major
    real_features: torch.Tensor


@dataclass(frozen=True)
class Benchmark:
    """What scores a VLM: the root's tokenizer with its renderer, its evaluator, and two prompt sets
    (RL changes none of these, so one load serves the pretrained model and every seed):
    ``heldout``, the evaluate stage's benchmark, and ``train``, as many of the prompts RL trains on.
    A gain on the second that the first does not show is learnt per prompt and does not carry over."""

    decode: DecodeFn
    evaluator: SceneEvaluator
    params: Params
    sets: dict[str, PromptSet]

    @classmethod
    def load(cls, root: Path, params: Params, arm: Arm = SELFTOK) -> Benchmark:
        tokenizer = arm.load_tokenizer(root, with_renderer=True)  # names a missing model folder
        decode, evaluator = render_fn(tokenizer), SceneEvaluator.load(root / EVALUATOR)
        per_set = params.vlm.eval.geneval_prompts_per_category
        records = {"heldout": heldout_records(params), "train": per_category(prompt_sets(params)["train"], per_set)}
        sets = {}
        for name, rows in records.items():
            real = reference_images(tokenizer, decode, benchmark_renders(params, rows))
            sets[name] = PromptSet(rows, real, evaluator.features(real))
        return cls(decode, evaluator, params, sets)

    def score(self, model: Path, prompts: str = "heldout") -> dict[str, Any]:
        """The evaluate stage's generation scores of one VLM on a prompt set (per category, diversity, distance to real)."""
        chosen = self.sets[prompts]
        summary, _ = benchmark_generation(SelftokVLM.from_pretrained(model), chosen.records, self.decode, self.evaluator,
                                          benchmark_sampling(self.params), chosen.real_features)
        return summary

    def with_params(self, params: Params) -> Benchmark:
        """The same prompts, renders and judge, drawing with ``params``' sampling recipe."""
        return dataclasses.replace(self, params=params)

    def overall_by_seed(self, model: Path, seeds: int) -> list[float]:
        """Held-out overall under ``seeds`` sampling seeds from the recipe's own: how much of a
        difference the draw of images alone makes (docs/rl_finetune.md, fourteenth session)."""
        return [self.with_params(reseeded(self.params, i)).score(model)["overall"] for i in range(seeds)]

    def reference(self, prompts: str = "heldout") -> dict[str, Any]:
        """The real renders of a prompt set through the tokenizer, as evaluate measures them: their
        diversity and their scores (the data ceiling)."""
        chosen, n = self.sets[prompts], benchmark_sampling(self.params).samples_per_prompt
        return {"diversity_reference": reference_diversity(chosen.real, chosen.real_features, n),
                "data_ceiling": data_ceiling(chosen.records, chosen.real, self.evaluator, n)}


def workdir(root: Path, work: Path, raw: dict[str, Any], arm: Arm) -> None:
    """A project folder holding only what the arm's RL stage reads: params, the stage graph, its models and codes."""
    copied = ("dvc.yaml", arm.vlm, arm.codes, arm.tokenizer, *([arm.renderer] if arm.renderer else []), EVALUATOR)
    for item in copied:
        source, target = root / item, work / item
        if not source.exists():
            raise FileNotFoundError(f"{source}: missing; run the pipeline up to pretrain_vlm@{arm.name} on {root} first")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    (work / PARAMS_FILE).write_text(yaml.safe_dump(raw, sort_keys=False))


def last_weights(work: Path, arm: Arm) -> Path:
    """The RL model with the weights of the run's last checkpoint (where ``rl.select: best_val`` kept an
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


def table(rows: list[dict[str, Any]], baseline: dict[str, Any]) -> str:
    """The finished seeds as a Markdown table: score per category, diversity (against that of real
    renders), objects drawn beyond those asked, strict score (held-out and on RL's own prompts),
    distance to real renders, training reward and KL. Headers carry the pretrained model's and the
    data's (real renders through the tokenizer) values where ``baseline`` has them."""
    reference, ceiling = baseline["diversity_reference"], baseline.get("data_ceiling", {})
    train = baseline.get("train", {})
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
    (out / "table.md").write_text(table(rows, json.loads((out.parent / "pretrained.json").read_text())))
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project with trained models (params.yaml read from here)")
    ap.add_argument("--name", required=True, help="the recipe's name: results go to OUT/NAME")
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="values of rl.seed")
    ap.add_argument("--set", action="append", default=[], help="params override KEY=VALUE, e.g. rl.group_size=24")
    ap.add_argument("--out", type=Path, default=Path("ablation_runs/rl"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--arm", choices=sorted(ARMS), default=SELFTOK.name, help="tokenizer arm whose RL stage runs (its own --out)")
    ap.add_argument("--sample-seeds", type=int, default=1,
                    help="also score held-out overall under this many sampling seeds, paired with the pretrained model's (>1: a table column)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("alembic", "urllib3", "httpx", "git", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    root = args.root.resolve()
    try:  # a bad root or override fails here, before any work
        recipe = merged(read_params(root / PARAMS_FILE), parse_overrides(args.set))
        params = parse_params(recipe, f"{root / PARAMS_FILE} with {' '.join(args.set)}")
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    arm = ARMS[args.arm]
    bench = Benchmark.load(root, params, arm)

    pinned = {"benchmark": benchmark_hash(params, root / EVALUATOR), "pretrained_sha256": file_hash(root / arm.vlm)}
    baseline_file = args.out / "pretrained.json"
    baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else dict(pinned)
    if {k: baseline.get(k) for k in pinned} != pinned:
        raise SystemExit(f"{baseline_file}: scored on another benchmark or pretrained model than {root}'s; use another --out")
    if "train" not in baseline:  # made once (a file from before the train-prompt scores gets them added)
        baseline |= {**bench.score(root / arm.vlm), **bench.reference(),
                     "train": {**bench.score(root / arm.vlm, "train"), **bench.reference("train")}}
    if args.sample_seeds > len(baseline.get("overall_by_seed", [])):
        baseline["overall_by_seed"] = bench.overall_by_seed(root / arm.vlm, args.sample_seeds)
    baseline_file.parent.mkdir(parents=True, exist_ok=True)
    baseline_file.write_text(json.dumps(baseline, indent=1) + "\n")

    for seed in args.seeds:
        work = (args.out / args.name / f"seed_{seed}").resolve()
        if (work / "result.json").is_file():
            if json.loads((work / "result.json").read_text())["sets"] != args.set:
                raise SystemExit(f"{work / 'result.json'}: made with other --set values; use another --name")
            print(f"seed {seed}: done before ({work / 'result.json'})")
            continue
        raw = merged(recipe, {"rl": {"seed": seed}})
        workdir(root, work, raw, arm)
        started = time.perf_counter()
        stage = run_stage(f"rl_finetune@{arm.name}", work)
        rl_seconds = time.perf_counter() - started
        rl, rl_train = bench.score(work / arm.vlm_rl), bench.score(work / arm.vlm_rl, "train")
        gain = {k: rl[k] - baseline[k] for k in (*CATEGORIES, "overall", "overall_strict") if k in rl and k in baseline}
        gain_train = {k: rl_train[k] - baseline["train"][k] for k in ("overall", "overall_strict")}
        result = {"name": args.name, "seed": seed, "sets": args.set, "rl_seconds": rl_seconds, "gain": gain,
                  "gain_train_prompts": gain_train, "rl": rl, "rl_train_prompts": rl_train, "pretrained": baseline, "stage": stage}
        if stage.get("validation", {}).get("selected_step") is not None:  # what the selection passed over
            result["rl_last"] = bench.score(last_weights(work, arm))
        if args.sample_seeds > 1:
            result["overall_by_seed"] = bench.overall_by_seed(work / arm.vlm_rl, args.sample_seeds)
        (work / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"seed {seed}: overall {baseline['overall']:.3f} -> {rl['overall']:.3f} ({gain['overall'] * 100:+.1f} points), "
              f"spread {rl['diversity']['feature_spread']:.2f}, {rl_seconds:.0f} s")

    summary = summarize(args.out / args.name)
    (args.out / args.name / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
