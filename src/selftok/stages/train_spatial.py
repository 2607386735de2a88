"""Stage train_spatial: the spatial-token control tokenizer on the same data as Selftok.

Same accepted train images, K, codebook and bits per image as train_tokenizer, and the budget
of train_tokenizer + train_renderer (params `control.spatial`). Outs: models/spatial (its own
decoder is its renderer, so downstream stages take this one folder), checkpoints/spatial
(persisted, for resume), plots/train_spatial_loss.csv, plots/spatial_prefix.csv. Registered as
`selftok-spatial`.
"""

from __future__ import annotations

from pathlib import Path

from selftok import tracking
from selftok.data.dataset import IMAGE_TRAINING, load_split
from selftok.stages.arms import SPATIAL
from selftok.stages.base import Metrics, StageContext
from selftok.stages.train_tokenizer import history_logger, train_summary, write_csv, write_history_csv
from selftok.tokenizer.grids import reconstruction_grid
from selftok.tokenizer.metrics import evaluate_renderer
from selftok.tokenizer.spatial import SpatialTokenizer
from selftok.tokenizer.spatial_train import train_spatial
from selftok.tokenizer.train import make_accelerator

CHECKPOINTS = Path("checkpoints/spatial")


def run(ctx: StageContext) -> Metrics:
    p, seed, evaluation = ctx.params.control.spatial, ctx.params.seed, ctx.params.tokenizer.eval
    train = load_split(ctx.root, IMAGE_TRAINING).images
    val = load_split(ctx.root, "val", limit=evaluation.val_images).images
    model = SpatialTokenizer(p.architecture(ctx.params.data.image_size))
    checkpoints = ctx.path(CHECKPOINTS)
    accelerator = make_accelerator()
    callbacks = history_logger(ctx, checkpoints, "train")

    def on_eval(step: int) -> None:
        ctx.log_image(reconstruction_grid(model, val[: evaluation.grid_images], steps=1), f"grids/step_{step:06d}.png")

    callbacks.on_eval = on_eval
    result = train_spatial(model, train, p, seed, checkpoints, callbacks if accelerator.is_main_process else None, accelerator)
    if not accelerator.is_main_process:
        return {}
    model.save_pretrained(ctx.path(SPATIAL.tokenizer))
    scores = evaluate_renderer(model, val)
    write_history_csv(checkpoints, ctx.path("plots/train_spatial_loss.csv"))
    write_csv(ctx.path("plots/spatial_prefix.csv"), [{"k": int(k), "psnr": v} for k, v in scores["prefix_psnr_renderer"].items()])
    tracking.log_model_dir(ctx.path(SPATIAL.tokenizer), "selftok-spatial")
    return {"tokenizer": scores, "train": train_summary(result), "params_millions": sum(q.numel() for q in model.parameters()) / 1e6}
