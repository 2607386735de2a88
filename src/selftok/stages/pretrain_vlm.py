"""Stage `pretrain_vlm@ARM`: the arm's code shards -> its AR vision-language model.

Selftok arm: data/codes -> models/vlm (registered as selftok-vlm); the spatial control arm:
data/codes_spatial -> models/vlm_spatial (selftok-spatial-vlm), same recipe (selftok.stages.arms).

Trains the text BPE on the training captions (kept with the checkpoints, so a resumed run
uses the same vocabulary), pretrains the Llama backbone on the mixed layouts with periodic
val losses and generated samples (rendered to images when the tokenizer's renderer exists,
code statistics otherwise), then scores caption accuracy on val and GenEval-style generation
on the benchmark's prompt sets, rl_test and compositional (when the scene evaluator exists).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import mlflow
import torch

from selftok import paths, tracking
from selftok.data.codes import CodeSet, load_codes
from selftok.data.dataset import to_uint8
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.geneval import limited_sets
from selftok.stages.arms import Arm, serving_models, stage_arm
from selftok.stages.base import Metrics, StageContext
from selftok.training.loop import Callbacks, make_accelerator
from selftok.viz import image_grid
from selftok.vlm.decode import render_fn
from selftok.vlm.generate import generate_images
from selftok.vlm.model import SelftokVLM, build_lm, build_vocabulary
from selftok.vlm.params import VLMParams
from selftok.vlm.scores import DecodeFn, comprehension, generation
from selftok.vlm.train import evaluate_loss, train_vlm
from selftok.vlm.vocab import VLMTokenizer

log = logging.getLogger(__name__)


def vocabulary(root: Path, train: CodeSet, params: VLMParams, arm: Arm) -> VLMTokenizer:
    """The BPE + visual vocabulary, built once per recipe and reused when the run resumes."""
    info = json.loads((root / arm.codes / "info.json").read_text())
    k, c = int(info["num_tokens"]), int(info["codebook_size"])
    if train.codes.shape[1] != k:
        raise ValueError(f"{arm.codes}/info.json says K={k} but the train codes have {train.codes.shape[1]} tokens")
    folder = root / arm.vlm_checkpoints / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return VLMTokenizer.from_pretrained(folder)
    tokenizer = build_vocabulary(params, train.captions, c, k)
    tokenizer.save_pretrained(folder)
    return tokenizer


def code_stats(codes: torch.Tensor, reference: torch.Tensor, num_codes: int) -> dict[str, float]:
    """How diverse generated codes are, and how often v1 (the coarsest token) matches the val image of the caption."""
    counts = torch.bincount(codes.flatten(), minlength=num_codes).float()
    p = counts[counts > 0] / counts.sum()
    return {
        "unique_code_fraction": float((counts > 0).float().mean()),
        "code_entropy_bits": float(-(p * p.log2()).sum()),
        "v1_match": float((codes[:, 0] == reference[:, 0]).float().mean()),
    }


def sample_logger(ctx: StageContext, vlm: SelftokVLM, val: CodeSet, params: VLMParams, decode: DecodeFn | None, seed: int):
    """on_eval callback: val losses, and samples for the first val captions (images or code stats)."""
    s = params.sampling
    prompts = val.captions[: params.eval.sample_prompts]
    val_ids = vlm.tokenizer.encode_text(val.captions)

    def on_eval(step: int) -> None:
        ctx.log_metrics({"val": evaluate_loss(vlm.lm, vlm.tokenizer, val_ids, val.codes, params, seed)}, step)
        codes = generate_images(
            vlm.lm, vlm.tokenizer, prompts, 1, s.cfg_scale, s.temperature, s.top_k, s.seed, s.batch_size, min_p=s.min_p
        )
        ctx.log_metrics({"samples": code_stats(codes, val.codes[: len(prompts)], vlm.tokenizer.num_codes)}, step)
        if decode is not None:
            ctx.log_image(image_grid(to_uint8(decode(codes)), columns=8, scale=3), f"samples/step_{step:07d}.png")

    return on_eval


def run(ctx: StageContext) -> Metrics:
    params: VLMParams = ctx.params.vlm
    seed, arm = ctx.params.seed, stage_arm(ctx)
    train, val = load_codes(ctx.root, "train", folder=arm.codes), load_codes(ctx.root, "val", folder=arm.codes)
    accelerator = make_accelerator(params)
    if accelerator.is_main_process:  # stale checkpoints were already set aside by the stage contract
        vocabulary(ctx.root, train, params, arm)
    accelerator.wait_for_everyone()
    tokenizer = vocabulary(ctx.root, train, params, arm)
    lm = build_lm(params, tokenizer, seed)
    vlm = SelftokVLM(lm, tokenizer, params.sampling)
    can_render = accelerator.is_main_process and arm.can_render(ctx.root)
    decode = render_fn(arm.load_tokenizer(ctx.root, with_renderer=True), accelerator.device) if can_render else None
    if decode is None and accelerator.is_main_process:
        log.warning("no tokenizer renderer yet: samples are logged as code statistics only")
    callbacks = Callbacks(on_log=ctx.logger("train"), on_eval=sample_logger(ctx, vlm, val, params, decode, seed))
    result, task = train_vlm(
        lm, tokenizer, tokenizer.encode_text(train.captions), train.codes, params, seed, ctx.path(arm.vlm_checkpoints),
        callbacks, accelerator,
    )
    if result.seconds > 0 and result.steps > result.resumed_from:
        ctx.log_metrics({"train_tokens_per_s": task.tokens_seen * accelerator.num_processes / result.seconds})
    if not accelerator.is_main_process:
        return {}
    vlm.lm = accelerator.unwrap_model(lm).eval()
    vlm.save_pretrained(ctx.path(arm.vlm))
    mlflow.set_tag("registered_version", tracking.log_model_dir(ctx.path(arm.vlm), arm.registered_vlm, serving_models(ctx, arm)))

    n_val = min(params.eval.caption_samples, len(val))
    metrics: Metrics = {
        "params_millions": sum(p.numel() for p in vlm.lm.parameters()) / 1e6,
        "steps": result.steps,
        "train": {k: v for k, v in (result.history[-1] if result.history else {}).items() if k.startswith("loss")},
        "val": evaluate_loss(vlm.lm, tokenizer, tokenizer.encode_text(val.captions), val.codes, params, seed),
    }
    if all("objects" in m for m in val.metadata[:n_val]):
        scores, texts = comprehension(vlm.lm, tokenizer, val.codes[:n_val], val.metadata[:n_val], val.captions[:n_val], params.sampling)
        metrics["comprehension"] = scores
        examples = [{"key": k, "reference": r, "caption": t} for k, r, t in zip(val.keys[:n_val], val.captions[:n_val], texts, strict=True)]
        mlflow.log_dict({"captions": examples}, "captions/val.json")
    evaluator_ready = (ctx.path(paths.EVALUATOR) / "config.json").is_file()
    if decode is not None and evaluator_ready:
        evaluator = SceneEvaluator.load(ctx.path(paths.EVALUATOR), accelerator.device)
        metrics["generation"] = {}
        for name, records in limited_sets(ctx.params.data, seed, ctx.params.geneval, params.eval.geneval_prompts_per_category).items():
            summary, images = generation(vlm.lm, tokenizer, records, decode, evaluator, params.sampling)
            metrics["generation"][name] = {"pretrained": summary}
            n = params.sampling.samples_per_prompt
            ctx.log_image(image_grid(to_uint8(images[: 8 * n]), columns=n, scale=3), f"generation/{name}.png")
    else:
        log.warning("generation scores skipped: needs the arm's renderer (%s) and models/evaluator (%s)", decode is not None, evaluator_ready)
    return _finite(metrics)


def _finite(data: Any) -> Any:
    """JSON-safe metrics (NaN would break `dvc metrics`)."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data
