"""Stage `train_evaluator`: the scene evaluator that scores generations and pays RL rewards.

Trained on validated real renders only (never on generated images), it is reported with its
own accuracy: per attribute and per scene on clean and on degraded held-out val renders, plus
the benchmark's sanity checks (real renders of held-out prompts score near 1, noise and
shuffled prompt pairs near chance, rewards prefer matching images).

It trains a second, independent evaluator too, the benchmark's judge (selftok.paths.JUDGE): the
same data and recipe from another seed at another width (selftok.eval.training.judge_params), so
a policy that games the evaluator paying its reward cannot game the judge by the same flaws. Its
metrics (section ``judge``) carry the same keys as the evaluator's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw

from selftok import paths, tracking
from selftok.data.dataset import ImageSet, load_split, to_uint8
from selftok.data.scenes import SceneGenerator
from selftok.eval.evaluator import ParsedObject, SceneEvaluator, objects_from_metadata, pair_accuracy
from selftok.eval.geneval import prompt_sets, sanity_metrics, scene_config
from selftok.eval.params import EvaluatorParams
from selftok.eval.training import degrade, evaluate_parses, judge_params, judge_seed, train_evaluator
from selftok.stages.base import Metrics, StageContext
from selftok.viz import image_grid

log = logging.getLogger(__name__)
REGISTERED_NAME = "selftok-evaluator"
JUDGE_REGISTERED_NAME = "selftok-judge"


@dataclass(frozen=True)
class Role:
    """One of the stage's two evaluators: its metrics section, folders and registered model."""

    name: str
    folder: str
    checkpoints: str
    registered: str
    curves: str  # MLflow prefix of its per-epoch rows


EVALUATOR = Role("evaluator", paths.EVALUATOR, paths.EVALUATOR_CHECKPOINTS, REGISTERED_NAME, "epoch")
JUDGE = Role("judge", paths.JUDGE, paths.JUDGE_CHECKPOINTS, JUDGE_REGISTERED_NAME, "judge.epoch")


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


def assess(
    ctx: StageContext, model: SceneEvaluator, val: ImageSet, degraded_images: torch.Tensor, heldout: list[dict[str, Any]]
) -> Metrics:
    """One evaluator's own accuracy: clean and degraded val renders, held-out pairs, sanity checks
    (the same images for both evaluators, so their numbers compare)."""
    params, seed, scenes = ctx.params.evaluator, ctx.params.seed, ctx.params.data.scenes
    truths = [objects_from_metadata(m) for m in val.metadata]
    holdout = {tuple(pair.split(" ", 1)) for pair in scenes.holdout}
    pairs = pair_accuracy(truths, model.parse(val.images), params.match_tolerance * model.config.image_size, holdout)
    sanity = sanity_metrics(
        model,
        heldout,
        SceneGenerator(scene_config(ctx.params.data), scenes.seed),
        params.heldout_samples_per_prompt,
        params.sanity_pairs,
        seed,
    )
    return {
        **evaluate_parses(model, val.images, val, params),
        **({"heldout_pair_accuracy": pairs} if pairs is not None else {}),  # None: no such pair in val
        "degraded": evaluate_parses(model, degraded_images, val, params),
        **sanity,
        "params_thousands": sum(p.numel() for p in model.parameters()) / 1e3,
    }


def publish(ctx: StageContext, role: Role, model: SceneEvaluator, val: ImageSet, degraded_images: torch.Tensor,
            extra_config: dict[str, Any]) -> int:
    """Save one evaluator, register it in MLflow and log its parses; returns its registered version."""
    model.save(ctx.path(role.folder), extra_config)
    version = tracking.log_model_dir(ctx.path(role.folder), role.registered)
    shown = val.images[:32]
    ctx.log_image(annotate(shown, model.parse(shown)), f"{role.name}/val_parses.png")
    shown = to_uint8(degraded_images[:32])
    ctx.log_image(annotate(shown, model.parse(shown)), f"{role.name}/degraded_parses.png")
    return int(version)


def run(ctx: StageContext) -> Metrics:
    params, seed = ctx.params.evaluator, ctx.params.seed
    train, val = load_split(ctx.root, "train"), load_split(ctx.root, "val")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    degraded_images = degrade(val.images, params.degrade, seed)
    heldout = prompt_sets(ctx.params.data, seed, ctx.params.geneval)["compositional"]
    roles: list[tuple[Role, EvaluatorParams, int]] = [(EVALUATOR, params, seed), (JUDGE, judge_params(params), judge_seed(seed))]
    metrics: Metrics = {}
    loop_seconds = 0.0
    for role, role_params, role_seed in roles:
        started = time.perf_counter()
        model, history = train_evaluator(
            train, val, role_params, role_seed, ctx.path(role.checkpoints),
            lambda row, step, curves=role.curves: ctx.log_metrics({curves: row}, step), device, role.name,
        )
        loop_seconds += time.perf_counter() - started
        section = assess(ctx, model, val, degraded_images, heldout)
        extra = {"trained_on": {"train": len(train), "val": len(val)}}
        section |= {"epochs": len(history), "registered_version": publish(ctx, role, model, val, degraded_images, extra)}
        log.info(
            "%s (width %d): scene accuracy %.4f clean, %.4f degraded; held-out renders %.4f",
            role.name,
            role_params.width,
            section["scene_accuracy"],
            section["degraded"]["scene_accuracy"],
            section["heldout_render_overall"],
        )
        metrics[role.name] = section
    ctx.log_metrics({"train_seconds": loop_seconds})  # both training loops
    return metrics

