"""Stage `train_evaluator`: the scene evaluator that scores generations and pays RL rewards.

Trained on validated real renders only (never on generated images), it is reported with its
own accuracy: per attribute and per scene on clean and on degraded held-out val renders, plus
the benchmark's sanity checks (real renders of held-out prompts score near 1, noise and
shuffled prompt pairs near chance, rewards prefer matching images).
"""

from __future__ import annotations

import logging
import time

import torch
from PIL import Image, ImageDraw

from selftok import paths, tracking
from selftok.data.dataset import load_split, to_uint8
from selftok.data.scenes import SceneGenerator
from selftok.eval.evaluator import ParsedObject, objects_from_metadata, pair_accuracy
from selftok.eval.geneval import prompt_sets, sanity_metrics, scene_config
from selftok.eval.training import degrade, evaluate_parses, train_evaluator
from selftok.stages.base import Metrics, StageContext
from selftok.viz import image_grid

log = logging.getLogger(__name__)
REGISTERED_NAME = "selftok-evaluator"


def annotate(images: torch.Tensor, parses: list[list[ParsedObject]], scale: int = 8, columns: int = 8) -> Image.Image:
    """A grid of images with the evaluator's boxes and labels drawn on, for eyeballing parses."""
    grid = image_grid(images, columns=columns, pad=1, scale=scale)
    draw = ImageDraw.Draw(grid)
    size = images.shape[-1]
    for i, objects in enumerate(parses):
        row, col = divmod(i, columns)
        ox, oy = (1 + col * (size + 1)) * scale, (1 + row * (size + 1)) * scale
        for obj in objects:
            x0, y0, x1, y1 = (v * scale for v in obj.box)
            draw.rectangle((ox + x0, oy + y0, ox + x1, oy + y1), outline=(255, 255, 255))
            draw.text((ox + x0 + 2, oy + y0 + 1), f"{obj.color[:3]} {obj.shape[:3]}", fill=(255, 255, 255))
    return grid


def run(ctx: StageContext) -> Metrics:
    params, seed = ctx.params.evaluator, ctx.params.seed
    scenes = ctx.params.data.scenes
    train, val = load_split(ctx.root, "train"), load_split(ctx.root, "val")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    model, history = train_evaluator(
        train, val, params, seed, ctx.path(paths.EVALUATOR_CHECKPOINTS), lambda row, step: ctx.log_metrics({"epoch": row}, step), device
    )
    ctx.log_metrics({"train_seconds": time.perf_counter() - started})

    clean = evaluate_parses(model, val.images, val, params)
    truths = [objects_from_metadata(m) for m in val.metadata]
    holdout = {tuple(pair.split(" ", 1)) for pair in scenes.holdout}
    pairs = pair_accuracy(truths, model.parse(val.images), params.match_tolerance * model.config.image_size, holdout)
    degraded_images = degrade(val.images, params.degrade, seed)
    degraded = evaluate_parses(model, degraded_images, val, params)
    heldout = prompt_sets(ctx.params.data, seed, ctx.params.geneval)["compositional"]
    sanity = sanity_metrics(
        model,
        heldout,
        SceneGenerator(scene_config(ctx.params.data), scenes.seed),
        params.heldout_samples_per_prompt,
        params.sanity_pairs,
        seed,
    )

    model.save(ctx.path(paths.EVALUATOR), {"trained_on": {"train": len(train), "val": len(val)}})
    version = tracking.log_model_dir(ctx.path(paths.EVALUATOR), REGISTERED_NAME)
    shown = val.images[:32]
    ctx.log_image(annotate(shown, model.parse(shown)), "evaluator/val_parses.png")
    shown = to_uint8(degraded_images[:32])
    ctx.log_image(annotate(shown, model.parse(shown)), "evaluator/degraded_parses.png")
    log.info(
        "evaluator: scene accuracy %.4f clean, %.4f degraded; held-out renders %.4f",
        clean["scene_accuracy"],
        degraded["scene_accuracy"],
        sanity["heldout_render_overall"],
    )
    return {
        "evaluator": {
            **clean,
            **({"heldout_pair_accuracy": pairs} if pairs is not None else {}),  # None: no such pair in val
            "degraded": degraded,
            **sanity,
            "epochs": len(history),
            "params_thousands": sum(p.numel() for p in model.parameters()) / 1e3,
            "registered_version": int(version),
        }
    }
