"""Stage `evaluate`: every headline number of the metrics contract, the report, and promotion.

Reconstruction (each prefix, diffusion vs renderer, no-token baseline), the scene evaluator on
held-out real renders, GenEval-style generation of the pretrained and the RL model on the
held-out prompts (one sampling recipe, selftok.vlm.benchmark), caption accuracy, and the AR-ness
probe (the VLM's next-token entropy by position over val codes). The same measurements run on
every tokenizer arm (selftok.stages.arms): Selftok's are the top-level keys, the spatial-token
control's mirror them under `control.spatial`, with the RL gain per category beside each. The
Selftok RL model is then compared with the `champion` of `selftok-vlm` on the same benchmark
(selftok.promotion); `challenger` always moves, `champion` only when the new model is better by
`evaluate.promotion_margin` and by `evaluate.promotion_sigmas` standard errors of the gain. A
champion scored on another benchmark (new data retrains the judge) is loaded from the registry,
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
from selftok.eval.geneval import heldout_records, real_renders
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
)
from selftok.vlm.decode import reference_images, render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.scores import comprehension


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


def score_arm(ctx: StageContext, arm: Arm, evaluator: SceneEvaluator, val: ImageSet, bench: Benchmark) -> ArmScores:
    """Reconstruction by prefix, GenEval-style generation of the pretrained and RL models, RL gain
    per category, caption accuracy and next-token entropy by position; images go to the report."""
    params, sampling, seed = ctx.params.evaluate, bench.sampling, ctx.params.seed
    images_dir = ctx.path(paths.REPORTS) / IMAGES
    tokenizer = arm.load_tokenizer(ctx.root, with_renderer=True)
    with_diffusion = isinstance(tokenizer, SelftokTokenizer)  # the spatial decoder is its renderer
    table, recon = reconstruction_table(tokenizer, evaluator, val.images, params.decode_steps, seed, with_diffusion=with_diffusion)
    k_all = tokenizer.config.num_tokens
    strip = torch.cat([val.images[:8]] + [to_uint8(recon[f"renderer/{k}"][:8]) for k in sorted({r["k"] for r in table})])
    image_grid(strip, columns=8, scale=3).save(images_dir / f"reconstruction_by_prefix{arm.suffix}.png")

    # Held-out colour-shape pairs are missing from the tokenizer's training images too: apart, so
    # that a tokenizer that cannot draw them is not mistaken for a VLM that cannot compose them.
    rendered = to_uint8(recon[f"renderer/{k_all}"])
    held = holdout_shape_agreement(evaluator, val.images, rendered, ctx.params.data.scenes.holdout)
    pairs = {f"shape_agreement_{group}": value for group, value in held.items()}
    decode = render_fn(tokenizer)  # the tokenizer loaded above, with its renderer
    n, records = sampling.samples_per_prompt, bench.records
    vlms = {"pretrained": SelftokVLM.from_pretrained(ctx.path(arm.vlm)), "rl": SelftokVLM.from_pretrained(ctx.path(arm.vlm_rl))}
    gen, entropy = {}, {}
    codes = load_codes(ctx.root, "val", limit=params.val_images, folder=arm.codes)
    real = reference_images(tokenizer, decode, bench.renders)
    real_features = evaluator.features(real)  # once: every model is measured against them
    for name, vlm in vlms.items():
        gen[name], images = benchmark_generation(vlm, records, decode, evaluator, sampling, real_features)
        picks = torch.cat([images[i * n : (i + 1) * n] for i in range(0, len(records), max(1, len(records) // 12))][:12])
        image_grid(to_uint8(picks), columns=n, scale=3).save(images_dir / f"generation{arm.suffix}_{name}.png")
        entropy[name] = entropy_by_position(vlm, codes.captions, codes.codes)
    n_caption = min(ctx.params.vlm.eval.caption_samples, len(codes))
    captions, _ = comprehension(vlms["pretrained"].lm, vlms["pretrained"].tokenizer, codes.codes[:n_caption],
                                codes.metadata[:n_caption], codes.captions[:n_caption], sampling)
    pretrained = entropy["pretrained"]
    metrics: Metrics = {
        "tokenizer": table_summary(table, recon["codes"], k_all, tokenizer.config.codebook_size) | pairs,
        "generation": gen,
        "rl_gain": {c: gen["rl"][c] - gen["pretrained"][c] for c in ("overall", *CATEGORIES) if c in gen["pretrained"]}
        | {"overall_se": math.hypot(gen["rl"]["overall_se"], gen["pretrained"]["overall_se"])},  # two independent draws
        "diversity_reference": reference_diversity(real, real_features, n),
        "data_ceiling": data_ceiling(records, real, evaluator, n),
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
    ctx.write_plot("geneval",
                   [{"category": c, **{_column(arm, m): s.metrics["generation"][m].get(c) for arm, s in arms.items()
                                       for m in ("pretrained", "rl")}}
                    for c in CATEGORIES if c in selftok.metrics["generation"]["pretrained"]])


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
    records = heldout_records(ctx.params.data, ctx.params.seed, ctx.params.geneval, ctx.params.vlm.eval.geneval_prompts_per_category)
    sampling = benchmark_sampling(ctx.params.vlm.sampling, params.samples_per_prompt)
    bench = Benchmark(records=records, sampling=sampling, renders=real_renders(ctx.params.data, records, sampling.samples_per_prompt))
    arms = {name: score_arm(ctx, arm, evaluator, val, bench) for name, arm in ARMS.items()}
    selftok = arms[SELFTOK.name]
    tolerance = ctx.params.evaluator.match_tolerance * evaluator.config.image_size
    judge = accuracy([objects_from_metadata(m) for m in val.metadata], evaluator.parse(val.images), tolerance)
    write_tables(ctx, arms)
    decision = promotion.promote(SELFTOK.registered_vlm, ctx.path(SELFTOK.vlm_rl), selftok.metrics["generation"],
                                 benchmark_hash(records, sampling, ctx.path(paths.EVALUATOR)), params.promotion_margin,
                                 params.promotion_sigmas, champion_rescorer(SELFTOK.registered_vlm, evaluator, bench))
    metrics: Metrics = {
        **selftok.metrics,
        "evaluator": judge,
        "control": {name: s.metrics for name, s in arms.items() if name != SELFTOK.name},
        "promotion": {"promoted": decision.promote, "reason": decision.reason, "challenger_score": decision.challenger_score,
                      "champion_score": decision.champion_score, "margin": decision.margin,
                      "required_gain": decision.required_gain, "champion_rescored": decision.champion_rescored},
    }
    index = build_report(ctx.path(paths.REPORTS), metrics, ctx.params.tracking.experiment)
    ctx.log_artifact(index.parent, "report")
    return metrics
