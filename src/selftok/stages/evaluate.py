"""Stage `evaluate`: every headline number of the metrics contract, the report, and promotion.

Reconstruction (each prefix, diffusion vs renderer, no-token baseline), the scene evaluator on
held-out real renders, GenEval-style generation of the pretrained and the RL model on the
held-out prompts (one sampling recipe), caption accuracy, and the AR-ness probe (the VLM's
next-token entropy by position over val codes). The RL model is then compared with the
`champion` of `selftok-vlm` on the same benchmark; `challenger` always moves, `champion` only
when the new model is better by `evaluate.promotion_margin`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from selftok import promotion, tracking
from selftok.config import params_hash
from selftok.data.codes import load_codes
from selftok.data.dataset import load_split, to_uint8
from selftok.data.scenes import CATEGORIES
from selftok.eval.evaluator import SceneEvaluator, accuracy, objects_from_metadata
from selftok.eval.reconstruction import reconstruction_table, row
from selftok.eval.report import IMAGES, REPORTS, build_report
from selftok.rl.grpo import token_entropy
from selftok.rl.trainer import diversity, visual_logits
from selftok.stages.base import Metrics, StageContext
from selftok.stages.pretrain_vlm import heldout_records
from selftok.stages.tokenize import load_tokenizer
from selftok.stages.train_tokenizer import write_csv
from selftok.tokenizer.quantizer import code_usage
from selftok.viz import image_grid
from selftok.vlm.decode import load_renderer
from selftok.vlm.model import SelftokVLM
from selftok.vlm.scores import comprehension, generation

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


def find_version(name: str, folder: Path) -> str:
    """The registry version whose logged weights hash to this folder's."""
    digest = tracking.file_hash(folder)
    for version in MlflowClient().search_model_versions(f"name = '{name}'"):
        if version.tags.get("weights.sha256") == digest:
            return str(version.version)
    raise LookupError(f"no version of {name} holds the weights in {folder} (sha256 {digest}); rerun the stage that registers it")


def run(ctx: StageContext) -> Metrics:
    params = ctx.params.evaluate
    images_dir = ctx.path(IMAGES)
    images_dir.mkdir(parents=True, exist_ok=True)
    val = load_split(ctx.root, "val", limit=params.val_images)
    tokenizer = load_tokenizer(ctx.root, with_renderer=True)
    evaluator = SceneEvaluator.load(ctx.path("models/evaluator"))

    # --- reconstruction ------------------------------------------------------------------------
    table, recon = reconstruction_table(tokenizer, evaluator, val.images, params.decode_steps, ctx.params.seed)
    k_all = tokenizer.config.num_tokens
    strip = torch.cat([val.images[:8]] + [to_uint8(recon[f"renderer/{k}"][:8]) for k in sorted({r["k"] for r in table})])
    image_grid(strip, columns=8, scale=3).save(images_dir / "reconstruction_by_prefix.png")
    (ctx.path(REPORTS) / "reconstruction.json").write_text(json.dumps(table, indent=1) + "\n")
    write_csv(ctx.path(PLOTS / "reconstruction.csv"), table)
    usage = code_usage(recon["codes"], tokenizer.config.codebook_size)
    tokenizer_metrics = {
        "psnr_diffusion": row(table, "diffusion", k_all)["psnr"],
        "psnr_renderer": row(table, "renderer", k_all)["psnr"],
        "ssim_renderer": row(table, "renderer", k_all)["ssim"],
        "psnr_no_tokens": row(table, "diffusion", 0)["psnr"],
        "prefix_psnr": {str(r["k"]): r["psnr"] for r in table if r["decoder"] == "renderer" and r["k"] > 0},
        "prefix_psnr_diffusion": {str(r["k"]): r["psnr"] for r in table if r["decoder"] == "diffusion" and r["k"] > 0},
        "active_code_fraction": usage["active_code_fraction"],
        "evaluator_fidelity": row(table, "renderer", k_all)["evaluator_fidelity"],
        "frechet_evaluator_distance": row(table, "renderer", k_all)["frechet_evaluator_distance"],
    }

    # --- the judge on held-out real renders -------------------------------------------------
    tolerance = ctx.params.evaluator.match_tolerance * evaluator.config.image_size
    judge = accuracy([objects_from_metadata(m) for m in val.metadata], evaluator.parse(val.images), tolerance)

    # --- generation, comprehension and the AR-ness probe -----------------------------------
    decode = load_renderer(ctx.root)
    records = heldout_records(ctx)
    vlms = {"pretrained": SelftokVLM.from_pretrained(ctx.path("models/vlm")), "rl": SelftokVLM.from_pretrained(ctx.path("models/vlm_rl"))}
    sampling = ctx.params.vlm.sampling
    gen, entropy = {}, {}
    codes = load_codes(ctx.root, "val", limit=params.val_images)
    for name, vlm in vlms.items():
        gen[name], images = generation(vlm.lm, vlm.tokenizer, records, decode, evaluator, sampling)
        gen[name].pop("images", None)
        gen[name]["diversity"] = diversity(to_uint8(images).flatten(1), evaluator.features(images), sampling.samples_per_prompt)
        n = sampling.samples_per_prompt
        picks = torch.cat([images[i * n : (i + 1) * n] for i in range(0, len(records), max(1, len(records) // 12))][:12])
        image_grid(to_uint8(picks), columns=n, scale=3).save(images_dir / f"generation_{name}.png")
        entropy[name] = entropy_by_position(vlm, codes.captions, codes.codes)
    write_csv(ctx.path(PLOTS / "entropy_by_position.csv"),
              [{"position": i + 1, **{name: e[i] for name, e in entropy.items()}} for i in range(k_all)])
    write_csv(ctx.path(PLOTS / "geneval.csv"),
              [{"category": c, **{name: gen[name].get(c) for name in gen}} for c in CATEGORIES if c in gen["pretrained"]])
    n_caption = min(ctx.params.vlm.eval.caption_samples, len(codes))
    captions, _ = comprehension(vlms["pretrained"].lm, vlms["pretrained"].tokenizer, codes.codes[:n_caption],
                                codes.metadata[:n_caption], codes.captions[:n_caption], sampling)

    # --- promotion -------------------------------------------------------------------------
    challenger = find_version(VLM_NAME, ctx.path("models/vlm_rl"))
    champion = tracking.alias_version(VLM_NAME, tracking.CHAMPION)
    champion_score = None
    if champion is not None and champion != challenger:
        tags = MlflowClient().get_model_version(VLM_NAME, champion).tags
        if tags.get("benchmark.hash") == _benchmark_hash(ctx, records) and "benchmark.overall" in tags:
            champion_score = float(tags["benchmark.overall"])
    benchmark = _benchmark_hash(ctx, records)
    if champion is not None and champion != challenger and champion_score is None:
        decision = promotion.Decision(False, f"champion v{champion} was scored on another benchmark; kept (move the alias "
                                      "by hand if the new one should replace it)", gen["rl"]["overall"], None, params.promotion_margin)
    else:
        decision = promotion.decide(gen["rl"]["overall"], champion_score, params.promotion_margin)
    client = MlflowClient()
    client.set_model_version_tag(VLM_NAME, challenger, "benchmark.hash", benchmark)
    client.set_model_version_tag(VLM_NAME, challenger, "benchmark.overall", str(gen["rl"]["overall"]))
    previous = promotion.apply(VLM_NAME, challenger, decision)
    log.info("promotion: %s (challenger v%s, champion before v%s)", decision.reason, challenger, previous)

    metrics: Metrics = {
        "tokenizer": tokenizer_metrics,
        "evaluator": judge,
        "generation": gen,
        "comprehension": {"caption_accuracy": captions["caption_accuracy"]},
        "ar_probe": {"entropy_first": entropy["pretrained"][0], "entropy_last": entropy["pretrained"][-1],
                     "entropy_mean": sum(entropy["pretrained"]) / k_all},
        "promotion": {"promoted": decision.promote, "reason": decision.reason, "challenger_score": decision.challenger_score,
                      "champion_score": decision.champion_score, "margin": decision.margin},
    }
    index = build_report(ctx.root, metrics, ctx.params.tracking.experiment)
    ctx.log_artifact(index.parent, "report")
    return metrics


def _benchmark_hash(ctx: StageContext, records: list[dict[str, Any]]) -> str:
    """Same prompts, same sampling recipe, same judge: scores under one hash are comparable."""
    judge = tracking.file_hash(ctx.path("models/evaluator"))
    return params_hash({"records": records, "sampling": ctx.params.vlm.sampling.model_dump(mode="json"), "judge": judge})
