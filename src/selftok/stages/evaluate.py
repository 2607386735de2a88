"""Stage `evaluate`: every headline number of the metrics contract, the report, and promotion.

Reconstruction (each prefix, diffusion vs renderer, no-token baseline), the scene evaluator on
held-out real renders, GenEval-style generation of the pretrained and the RL model on each
benchmark prompt set (``rl_test``, the paper's protocol, and ``compositional``; one sampling
recipe, selftok.vlm.benchmark), judged by the evaluator that gave RL its reward and by an
independent second judge (``judges.agreement``: a reward that rises while the second judge stays
flat is hacking), caption accuracy, and the AR-ness probe (the VLM's next-token entropy by
position over val codes). The same measurements run on
every tokenizer arm (selftok.stages.arms): Selftok's are the top-level keys, the spatial-token
control's mirror them under `control.spatial`, with the RL gain per category beside each. The
Selftok RL model is then compared with the `champion` of `selftok-vlm` on the same benchmark, the
``rl_test`` set (selftok.promotion); `challenger` always moves, `champion` only when the new model is better by
`evaluate.promotion_margin` and by `evaluate.promotion_sigmas` standard errors of the gain. A
champion scored on another benchmark (new data retrains the judges) is loaded from the registry,
with the tokenizer and renderer it was logged with, and re-scored here on this benchmark with the
challenger's sampling seeds, so that new data can move `champion` at all.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selftok import paths, promotion
from selftok.data.codes import load_codes
from selftok.data.dataset import ImageSet, load_split, to_uint8
from selftok.data.scenes import CATEGORIES
from selftok.eval.evaluator import SceneEvaluator, accuracy, objects_from_metadata
from selftok.eval.fidelity import holdout_shape_agreement
from selftok.eval.geneval import (
    BENCHMARK_SETS,
    held_out_pairs,
    judge_images,
    limited_sets,
    real_renders,
    summarize_judged,
)
from selftok.eval.reconstruction import reconstruction_table, table_summary
from selftok.eval.report import IMAGES, RECONSTRUCTION, build_report
from selftok.rl.grpo import token_entropy
from selftok.rl.trainer import visual_logits
from selftok.stages.arms import ARMS, SELFTOK, Arm
from selftok.stages.base import Metrics, StageContext
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.registry import load_tokenizer
from selftok.viz import image_grid
from selftok.vlm.benchmark import (
    Benchmark,
    benchmark_generation,
    benchmark_hash,
    benchmark_sampling,
    data_ceiling,
    reference_diversity,
    second_opinion,
)
from selftok.vlm.decode import reference_images, render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.scores import DecodeFn, comprehension

PROMOTION_SET = "rl_test"  # the champion is the better model on the paper's protocol
SET_SECTIONS = ("generation", "rl_gain", "diversity_reference", "data_ceiling")  # per benchmark prompt set


def entropy_by_position(vlm: SelftokVLM, captions: list[str], codes: torch.Tensor, batch: int = 64) -> list[float]:
    """Mean next-token entropy (nats) over the visual vocabulary at each image position."""
    total = torch.zeros(codes.shape[1])
    with torch.no_grad():
        for i in range(0, len(codes), batch):
            ids = vlm.tokenizer.encode_text(captions[i : i + batch])
            total += token_entropy(visual_logits(vlm.lm, vlm.tokenizer, ids, codes[i : i + batch])).sum(0).cpu()
    return (total / len(codes)).tolist()


@dataclass
class ArmScores:
    """Everything evaluate measures on one tokenizer arm, with the same code for every arm."""

    metrics: Metrics  # tokenizer, generation, rl_gain, comprehension, ar_probe
    table: list[dict[str, Any]]  # reconstruction rows
    entropy: dict[str, list[float]]  # model -> next-token entropy per position


def rl_gain(gen: dict[str, dict[str, Any]]) -> dict[str, float]:
    """RL minus pretrained per category, overall and strict, with the standard error of two independent draws."""
    before, after = gen["pretrained"], gen["rl"]
    keys = [c for c in ("overall", "overall_strict", *CATEGORIES) if c in before]
    return {c: after[c] - before[c] for c in keys} | {"overall_se": math.hypot(after["overall_se"], before["overall_se"]),
                                                      "overall_strict_se": math.hypot(after["overall_strict_se"], before["overall_strict_se"])}


def held_out_pair_scores(bench: Benchmark, images: torch.Tensor, evaluator: SceneEvaluator, holdout: list[str]) -> dict[str, Any]:
    """The prompts naming a held-out colour-shape pair, scored apart (none: empty)."""
    n = bench.sampling.samples_per_prompt
    picked = [i for i, r in enumerate(bench.records) if held_out_pairs([r], holdout)]
    if not picked:
        return {}
    rows = [bench.records[i] for i in picked for _ in range(n)]
    summary = summarize_judged(rows, judge_images(rows, torch.cat([images[i * n : (i + 1) * n] for i in picked]), evaluator))
    return {"overall": summary["overall"], "overall_se": summary["overall_se"], "overall_strict": summary["overall_strict"],
            "prompts": len(picked)}


@dataclass(frozen=True)
class Judges:
    """The evaluator (RL's reward, the benchmark's judge) and the independent second judge."""

    evaluator: SceneEvaluator
    judge: SceneEvaluator


def score_set(ctx: StageContext, arm: Arm, name: str, bench: Benchmark, vlms: dict[str, SelftokVLM], decode: DecodeFn,
              tokenizer: Any, judges: Judges) -> dict[str, Any]:
    """One prompt set's generation scores of each model by both judges (the held-out pairs apart),
    their RL gain, and the real renders' diversity and scores (the data ceiling); image grids go to
    the report."""
    n, holdout, evaluator = bench.sampling.samples_per_prompt, list(ctx.params.data.scenes.holdout), judges.evaluator
    rows = [r for r in bench.records for _ in range(n)]
    real = reference_images(tokenizer, decode, bench.renders)
    real_features = evaluator.features(real)  # once: every model is measured against them
    gen, agreement = {}, {}
    for model, vlm in vlms.items():
        gen[model], images = benchmark_generation(vlm, bench.records, decode, evaluator, bench.sampling, real_features)
        gen[model]["judge"] = second_opinion(rows, images, evaluator, judges.judge)
        agreement[model] = gen[model]["judge"]["agreement"]
        if pairs := held_out_pair_scores(bench, images, evaluator, holdout):
            gen[model]["held_out_pairs"] = pairs
        picks = torch.cat([images[i * n : (i + 1) * n] for i in range(0, len(bench.records), max(1, len(bench.records) // 12))][:12])
        image_grid(to_uint8(picks), columns=n, scale=3).save(ctx.path(paths.REPORTS) / IMAGES / f"generation{arm.suffix}_{name}_{model}.png")
    gain = rl_gain(gen) | {f"judge_{k}": gen["rl"]["judge"][k] - gen["pretrained"]["judge"][k] for k in ("overall", "overall_strict")}
    return {"generation": gen, "rl_gain": gain, "diversity_reference": reference_diversity(real, real_features, n),
            "data_ceiling": data_ceiling(bench.records, real, evaluator, n),
            "judges": {"agreement": agreement["rl"], "images": len(rows),
                       **{f"gap_{m}": gen[m]["overall"] - gen[m]["judge"]["overall"] for m in gen}}}


def agreement_over_sets(judges: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``judges.agreement``: per-image agreement of the two judges on the RL model's images of every
    set (weighted by images), with each set's own agreement and score gaps beside it."""
    images = sum(j["images"] for j in judges.values())
    return {"agreement": sum(j["agreement"] * j["images"] for j in judges.values()) / max(images, 1), **judges}


def score_arm(ctx: StageContext, arm: Arm, judges: Judges, val: ImageSet, benches: dict[str, Benchmark]) -> ArmScores:
    """Reconstruction by prefix, GenEval-style generation of the pretrained and RL models on every
    benchmark prompt set with the RL gain, caption accuracy and next-token entropy by position."""
    params, seed, evaluator = ctx.params.evaluate, ctx.params.seed, judges.evaluator
    tokenizer = arm.load_tokenizer(ctx.root, with_renderer=True)
    with_diffusion = isinstance(tokenizer, SelftokTokenizer)  # the spatial decoder is its renderer
    table, recon = reconstruction_table(tokenizer, evaluator, val.images, params.decode_steps, seed, with_diffusion=with_diffusion)
    k_all = tokenizer.config.num_tokens
    strip = torch.cat([val.images[:8]] + [to_uint8(recon[f"renderer/{k}"][:8]) for k in sorted({r["k"] for r in table})])
    image_grid(strip, columns=8, scale=3).save(ctx.path(paths.REPORTS) / IMAGES / f"reconstruction_by_prefix{arm.suffix}.png")

    # Held-out colour-shape pairs are missing from the tokenizer's training images too: apart, so
    # that a tokenizer that cannot draw them is not mistaken for a VLM that cannot compose them.
    rendered = to_uint8(recon[f"renderer/{k_all}"])
    held = holdout_shape_agreement(evaluator, val.images, rendered, ctx.params.data.scenes.holdout)
    pairs = {f"shape_agreement_{group}": value for group, value in held.items()}
    decode = render_fn(tokenizer)  # the tokenizer loaded above, with its renderer
    vlms = {"pretrained": SelftokVLM.from_pretrained(ctx.path(arm.vlm)), "rl": SelftokVLM.from_pretrained(ctx.path(arm.vlm_rl))}
    sets = {name: score_set(ctx, arm, name, bench, vlms, decode, tokenizer, judges) for name, bench in benches.items()}
    codes = load_codes(ctx.root, "val", limit=params.val_images, folder=arm.codes)
    entropy = {name: entropy_by_position(vlm, codes.captions, codes.codes) for name, vlm in vlms.items()}
    n_caption = min(ctx.params.vlm.eval.caption_samples, len(codes))
    captions, _ = comprehension(vlms["pretrained"].lm, vlms["pretrained"].tokenizer, codes.codes[:n_caption],
                                codes.metadata[:n_caption], codes.captions[:n_caption], ctx.params.vlm.sampling)
    pretrained = entropy["pretrained"]
    metrics: Metrics = {
        "tokenizer": table_summary(table, recon["codes"], k_all, tokenizer.config.codebook_size) | pairs,
        **{section: {name: scores[section] for name, scores in sets.items()} for section in SET_SECTIONS},
        "judges": agreement_over_sets({name: scores["judges"] for name, scores in sets.items()}),
        "comprehension": {"caption_accuracy": captions["caption_accuracy"]},
        "ar_probe": {"entropy_first": pretrained[0], "entropy_last": pretrained[-1], "entropy_mean": sum(pretrained) / k_all,
                     "entropy_by_position": {str(i + 1): e for i, e in enumerate(pretrained)}},
    }
    return ArmScores(metrics, table, entropy)


def write_tables(ctx: StageContext, arms: dict[str, ArmScores]) -> None:
    """Selftok's reconstruction table for the report, and the plots, one row or column per arm."""
    selftok = arms[SELFTOK.name]
    (ctx.path(paths.REPORTS) / RECONSTRUCTION).write_text(json.dumps(selftok.table, indent=1) + "\n")
    ctx.write_plot("reconstruction", [{"arm": name, **r} for name, s in arms.items() for r in s.table])
    ctx.write_plot("entropy_by_position",
                   [{"position": i + 1, **{_column(arm, m): e[i] for arm, s in arms.items() for m, e in s.entropy.items()}}
                    for i in range(len(selftok.entropy["pretrained"]))])
    generation = {arm: s.metrics["generation"] for arm, s in arms.items()}
    ctx.write_plot("geneval",
                   [{"category": c, **{_column(arm, f"{name}_{m}"): sets[name][m].get(c) for arm, sets in generation.items()
                                       for name in BENCHMARK_SETS for m in ("pretrained", "rl")}}
                    for c in CATEGORIES if c in generation[SELFTOK.name]["rl_test"]["pretrained"]])


def _column(arm: str, model: str) -> str:
    """Plot column of one arm's model: Selftok keeps the plain names (pretrained, rl)."""
    return model if arm == SELFTOK.name else f"{arm}_{model}"


def champion_rescorer(model_name: str, evaluator: SceneEvaluator, bench: Benchmark) -> promotion.Rescore:
    """Scores a registered version on this benchmark the way its own round scored it: its weights with
    the tokenizer and renderer it was logged with (its codes mean nothing to today's tokenizer), the
    same prompts, recipe and sampling seeds as the challenger, today's judge."""

    def rescore(version: str) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="selftok-champion-") as tmp:
            folders = promotion.version_folders(model_name, version, Path(tmp))
            vlm = SelftokVLM.from_pretrained(folders["weights"])
            tokenizer = load_tokenizer(folders["tokenizer"], renderer=folders.get("renderer"))
            summary, _ = benchmark_generation(vlm, bench.records, render_fn(tokenizer), evaluator, bench.sampling)
        return summary

    return rescore


def run(ctx: StageContext) -> Metrics:
    params = ctx.params.evaluate
    (ctx.path(paths.REPORTS) / IMAGES).mkdir(parents=True, exist_ok=True)
    val = load_split(ctx.root, "val", limit=params.val_images)
    evaluator = SceneEvaluator.load(ctx.path(paths.EVALUATOR))
    judges = Judges(evaluator, SceneEvaluator.load(ctx.path(paths.JUDGE)))
    sampling = benchmark_sampling(ctx.params.vlm.sampling, params.samples_per_prompt)
    benches = {name: Benchmark(records=records, sampling=sampling, renders=real_renders(ctx.params.data, records, sampling.samples_per_prompt))
               for name, records in limited_sets(ctx.params.data, ctx.params.seed, ctx.params.geneval,
                                                 ctx.params.vlm.eval.geneval_prompts_per_category).items()}
    arms = {name: score_arm(ctx, arm, judges, val, benches) for name, arm in ARMS.items()}
    selftok = arms[SELFTOK.name]
    tolerance = ctx.params.evaluator.match_tolerance * evaluator.config.image_size
    judge = accuracy([objects_from_metadata(m) for m in val.metadata], evaluator.parse(val.images), tolerance)
    write_tables(ctx, arms)
    bench = benches[PROMOTION_SET]
    decision = promotion.promote(SELFTOK.registered_vlm, ctx.path(SELFTOK.vlm_rl), selftok.metrics["generation"][PROMOTION_SET],
                                 benchmark_hash(bench.records, sampling, ctx.path(paths.EVALUATOR)), params.promotion_margin,
                                 params.promotion_sigmas, champion_rescorer(SELFTOK.registered_vlm, evaluator, bench))
    metrics: Metrics = {
        **selftok.metrics,
        "evaluator": judge,
        "control": {name: s.metrics for name, s in arms.items() if name != SELFTOK.name},
        "promotion": {"prompt_set": PROMOTION_SET, "promoted": decision.promote, "reason": decision.reason,
                      "challenger_score": decision.challenger_score, "champion_score": decision.champion_score,
                      "margin": decision.margin, "required_gain": decision.required_gain,
                      "champion_rescored": decision.champion_rescored},
    }
    index = build_report(ctx.path(paths.REPORTS), metrics, ctx.params.tracking.experiment)
    ctx.log_artifact(index.parent, "report")
    return metrics
