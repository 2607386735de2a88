"""Stage `evaluate`: every headline number of the metrics contract, the report, and promotion.

Reconstruction (each prefix, diffusion vs renderer, no-token baseline), the scene evaluator on
held-out real renders, GenEval-style generation of the pretrained and the RL model on the
held-out prompts (one sampling recipe), caption accuracy, and the AR-ness probe (the VLM's
next-token entropy by position over val codes). The same measurements run on every tokenizer
arm (selftok.stages.arms): Selftok's are the top-level keys, the spatial-token control's mirror
them under `control.spatial`, with the RL gain per category beside each. The Selftok RL model
is then compared with the `champion` of `selftok-vlm` on the same benchmark; `challenger`
always moves, `champion` only when the new model is better by `evaluate.promotion_margin` and by
`evaluate.promotion_sigmas` standard errors of the gain.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from selftok import promotion, tracking
from selftok.config import Params, params_hash
from selftok.data.codes import load_codes
from selftok.data.dataset import ImageSet, load_split, to_uint8
from selftok.data.scenes import CATEGORIES
from selftok.eval.evaluator import SceneEvaluator, accuracy, objects_from_metadata
from selftok.eval.fidelity import frechet_distance, holdout_shape_agreement
from selftok.eval.geneval import judge_images, real_renders, summarize_judged
from selftok.eval.reconstruction import reconstruction_table, row
from selftok.eval.report import IMAGES, REPORTS, build_report
from selftok.rl.grpo import token_entropy
from selftok.rl.trainer import diversity, visual_logits
from selftok.stages.arms import ARMS, SELFTOK, Arm
from selftok.stages.base import Metrics, StageContext
from selftok.stages.pretrain_vlm import heldout_records
from selftok.stages.train_tokenizer import write_csv
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.quantizer import code_usage
from selftok.viz import image_grid
from selftok.vlm.decode import reference_images, render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.params import SamplingParams
from selftok.vlm.scores import DecodeFn, comprehension, generation

log = logging.getLogger(__name__)
VLM_NAME = "selftok-vlm"
PLOTS = Path("plots")


def entropy_by_position(vlm: SelftokVLM, captions: list[str], codes: torch.Tensor, batch: int = 64) -> list[float]:
    """Mean next-token entropy (nats) over the visual vocabulary at each image position."""
    total = torch.zeros(codes.shape[1])
    with torch.no_grad():
        for i in range(0, len(codes), batch):
            ids = vlm.tokenizer.encode_text(captions[i : i + batch])
            total += token_entropy(visual_logits(vlm.lm, vlm.tokenizer, ids, codes[i : i + batch])).sum(0).cpu()
    return (total / len(codes)).tolist()


def benchmark_generation(
    vlm: SelftokVLM, records: list[dict[str, Any]], decode: DecodeFn, evaluator: SceneEvaluator, sampling: SamplingParams,
    real_features: torch.Tensor | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One model's GenEval-style scores on the benchmark prompts, with the diversity of its images
    within each prompt (a high score from one image per prompt is collapse, not skill) and, given
    ``real_features`` (evaluator features of real renders of the same prompts, ``reference_images``),
    the Frechet distance of its images to them: how far the images left the data to win the judge
    (a reward hack scores well on the rules and far on this)."""
    summary, images = generation(vlm.lm, vlm.tokenizer, records, decode, evaluator, sampling)
    summary.pop("images", None)
    features = evaluator.features(images)
    summary["diversity"] = diversity(to_uint8(images).flatten(1), features, images, sampling.samples_per_prompt)
    if real_features is not None:
        summary["frechet_to_real"] = frechet_distance(features, real_features)
    return summary, images


def benchmark_renders(params: Params, records: list[dict[str, Any]] | None = None) -> torch.Tensor:
    """uint8 real renders of the benchmark prompts (or of ``records``), as many per prompt as
    generations (prompt-major)."""
    records = heldout_records(params) if records is None else records
    return real_renders(params, records, benchmark_sampling(params).samples_per_prompt)


def data_ceiling(records: list[dict[str, Any]], real: torch.Tensor, evaluator: SceneEvaluator, n: int) -> dict[str, Any]:
    """The benchmark's scores of ``reference_images``, the real renders of its prompts through the
    tokenizer: what a model that draws exactly like its data would score. A gain that lifts a model
    above it is the judge being fooled or the model drawing more legibly than the tokenizer
    reconstructs the data; either way, look at the images (docs/rl_finetune.md, eleventh session)."""
    rows = [r for r in records for _ in range(n)]
    summary = summarize_judged(rows, judge_images(rows, real, evaluator))
    summary.pop("images")
    return summary


def reference_diversity(real: torch.Tensor, real_features: torch.Tensor, group_size: int) -> dict[str, float]:
    """The diversity generations are measured against: that of ``reference_images`` and their
    evaluator features (a right answer varies only in layout, so spread falls as scores rise)."""
    return diversity(to_uint8(real).flatten(1), real_features, real, group_size)


def find_version(name: str, folder: Path) -> str:
    """The registry version whose logged weights hash to this folder's."""
    digest = tracking.file_hash(folder)
    for version in MlflowClient().search_model_versions(f"name = '{name}'"):
        if version.tags.get("weights.sha256") == digest:
            return str(version.version)
    raise LookupError(f"no version of {name} holds the weights in {folder} (sha256 {digest}); rerun the stage that registers it")


def tokenizer_summary(table: list[dict[str, Any]], codes: torch.Tensor, num_tokens: int, codebook_size: int) -> Metrics:
    """Headline reconstruction numbers of one arm's table: renderer at all K, its prefix curve, the
    no-token baseline, and the diffusion decoder's where the tokenizer has one (Selftok)."""
    full = row(table, "renderer", num_tokens)
    diffusion = any(r["decoder"] == "diffusion" for r in table)
    summary = {
        "psnr_renderer": full["psnr"],
        "ssim_renderer": full["ssim"],
        "psnr_no_tokens": row(table, "diffusion" if diffusion else "renderer", 0)["psnr"],
        "prefix_psnr": {str(r["k"]): r["psnr"] for r in table if r["decoder"] == "renderer" and r["k"] > 0},
        "active_code_fraction": code_usage(codes, codebook_size)["active_code_fraction"],
        "evaluator_fidelity": full["evaluator_fidelity"],
        "shape_agreement": full["shape_agreement"],
        "color_agreement": full["color_agreement"],
        "frechet_evaluator_distance": full["frechet_evaluator_distance"],
    }
    if diffusion:
        summary["psnr_diffusion"] = row(table, "diffusion", num_tokens)["psnr"]
        summary["prefix_psnr_diffusion"] = {str(r["k"]): r["psnr"] for r in table if r["decoder"] == "diffusion" and r["k"] > 0}
    return summary


@dataclass
class ArmScores:
    """Everything evaluate measures on one tokenizer arm, with the same code for every arm."""

    metrics: Metrics  # tokenizer, generation, rl_gain, comprehension, ar_probe
    table: list[dict[str, Any]]  # reconstruction rows
    entropy: dict[str, list[float]]  # model -> next-token entropy per position


def score_arm(
    ctx: StageContext, arm: Arm, evaluator: SceneEvaluator, val: ImageSet, records: list[dict[str, Any]], renders: torch.Tensor
) -> ArmScores:
    """Reconstruction by prefix, GenEval-style generation of the pretrained and RL models, RL gain
    per category, caption accuracy and next-token entropy by position; images go to the report.
    ``renders``: uint8 real renders of ``records`` (prompt-major), the diversity reference."""
    params, sampling, seed = ctx.params.evaluate, benchmark_sampling(ctx.params), ctx.params.seed
    images_dir = ctx.path(IMAGES)
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
    n = sampling.samples_per_prompt
    vlms = {"pretrained": SelftokVLM.from_pretrained(ctx.path(arm.vlm)), "rl": SelftokVLM.from_pretrained(ctx.path(arm.vlm_rl))}
    gen, entropy = {}, {}
    codes = load_codes(ctx.root, "val", limit=params.val_images, folder=arm.codes)
    real = reference_images(tokenizer, decode, renders)
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
        "tokenizer": tokenizer_summary(table, recon["codes"], k_all, tokenizer.config.codebook_size) | pairs,
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


def run(ctx: StageContext) -> Metrics:
    params = ctx.params.evaluate
    ctx.path(IMAGES).mkdir(parents=True, exist_ok=True)
    val = load_split(ctx.root, "val", limit=params.val_images)
    evaluator = SceneEvaluator.load(ctx.path("models/evaluator"))
    records = heldout_records(ctx.params)
    renders = benchmark_renders(ctx.params)
    arms = {name: score_arm(ctx, arm, evaluator, val, records, renders) for name, arm in ARMS.items()}
    selftok = arms[SELFTOK.name]

    # --- the judge on held-out real renders -------------------------------------------------
    tolerance = ctx.params.evaluator.match_tolerance * evaluator.config.image_size
    judge = accuracy([objects_from_metadata(m) for m in val.metadata], evaluator.parse(val.images), tolerance)

    # --- tables and plots, one row or column per arm -----------------------------------------
    (ctx.path(REPORTS) / "reconstruction.json").write_text(json.dumps(selftok.table, indent=1) + "\n")
    write_csv(ctx.path(PLOTS / "reconstruction.csv"), [{"arm": name, **r} for name, s in arms.items() for r in s.table])
    k_all = len(selftok.entropy["pretrained"])
    write_csv(ctx.path(PLOTS / "entropy_by_position.csv"),
              [{"position": i + 1, **{_column(arm, m): e[i] for arm, s in arms.items() for m, e in s.entropy.items()}}
               for i in range(k_all)])
    write_csv(ctx.path(PLOTS / "geneval.csv"),
              [{"category": c, **{_column(arm, m): s.metrics["generation"][m].get(c) for arm, s in arms.items()
                                  for m in ("pretrained", "rl")}}
               for c in CATEGORIES if c in selftok.metrics["generation"]["pretrained"]])
    overall = selftok.metrics["generation"]["rl"]["overall"]

    # --- promotion -------------------------------------------------------------------------
    challenger = find_version(VLM_NAME, ctx.path("models/vlm_rl"))
    champion = tracking.alias_version(VLM_NAME, tracking.CHAMPION)
    champion_score = champion_se = None
    benchmark = benchmark_hash(ctx.params, ctx.path("models/evaluator"))
    if champion is not None and champion != challenger:
        tags = MlflowClient().get_model_version(VLM_NAME, champion).tags
        if tags.get("benchmark.hash") == benchmark and "benchmark.overall" in tags:
            champion_score = float(tags["benchmark.overall"])
            champion_se = float(tags["benchmark.overall_se"]) if "benchmark.overall_se" in tags else None
    generation = selftok.metrics["generation"]
    overall_se = generation["rl"]["overall_se"]
    hack = promotion.refuse_hack(generation["rl"], generation["pretrained"], champion_score, params.promotion_margin)
    if hack is not None:
        decision = hack
    elif champion is not None and champion != challenger and champion_score is None:
        decision = promotion.Decision(False, f"champion v{champion} was scored on another benchmark; kept (move the alias "
                                      "by hand if the new one should replace it)", overall, None, params.promotion_margin)
    else:
        decision = promotion.decide(overall, champion_score, params.promotion_margin,
                                    promotion.gain_se(overall_se, champion_se), params.promotion_sigmas)
    client = MlflowClient()
    client.set_model_version_tag(VLM_NAME, challenger, "benchmark.hash", benchmark)
    client.set_model_version_tag(VLM_NAME, challenger, "benchmark.overall", str(overall))
    client.set_model_version_tag(VLM_NAME, challenger, "benchmark.overall_se", str(overall_se))
    previous = promotion.apply(VLM_NAME, challenger, decision)
    log.info("promotion: %s (challenger v%s, champion before v%s)", decision.reason, challenger, previous)

    metrics: Metrics = {
        **selftok.metrics,
        "evaluator": judge,
        "control": {name: s.metrics for name, s in arms.items() if name != SELFTOK.name},
        "promotion": {"promoted": decision.promote, "reason": decision.reason, "challenger_score": decision.challenger_score,
                      "champion_score": decision.champion_score, "margin": decision.margin,
                      "required_gain": decision.required_gain},
    }
    index = build_report(ctx.root, metrics, ctx.params.tracking.experiment)
    ctx.log_artifact(index.parent, "report")
    return metrics


def _column(arm: str, model: str) -> str:
    """Plot column of one arm's model: Selftok keeps the plain names (pretrained, rl)."""
    return model if arm == SELFTOK.name else f"{arm}_{model}"


def benchmark_sampling(params: Params) -> SamplingParams:
    """The VLM's sampling recipe with the benchmark's number of images per prompt."""
    sampling, n = params.vlm.sampling, params.evaluate.samples_per_prompt
    return sampling if n is None else sampling.model_copy(update={"samples_per_prompt": n})


def benchmark_hash(params: Params, evaluator: Path) -> str:
    """Same prompts, same sampling recipe, same judge (the evaluator folder's weights): scores under
    one hash are comparable."""
    return params_hash({"records": heldout_records(params), "sampling": benchmark_sampling(params).model_dump(mode="json"),
                        "judge": tracking.file_hash(evaluator)})
