"""Stage train_spatial: the spatial-token control tokenizer on the same data as Selftok.

Same accepted train images, K, codebook and bits per image as train_tokenizer, and the budget
of train_tokenizer + train_renderer (params `control.spatial`). Outs: the spatial arm's tokenizer
(its own decoder is its renderer, so downstream stages take this one folder) and its checkpoints
(persisted, for resume); plots of the loss and the prefix PSNR. Registered as `selftok-spatial`.
"""

from __future__ import annotations

from selftok import paths, tracking
from selftok.data.dataset import IMAGE_TRAINING, load_split
from selftok.stages.base import Metrics, StageContext
from selftok.tokenizer.grids import reconstruction_grid
from selftok.tokenizer.metrics import evaluate_renderer
from selftok.tokenizer.spatial import SpatialTokenizer
from selftok.tokenizer.spatial_train import train_spatial
from selftok.training.history import history_logger, read_history
from selftok.training.loop import make_accelerator

MODEL = paths.ARMS["spatial"]["tokenizer"]


def run(ctx: StageContext) -> Metrics:
    p, seed, evaluation = ctx.params.control.spatial, ctx.params.seed, ctx.params.tokenizer.eval
    train = load_split(ctx.root, IMAGE_TRAINING).images
    val = load_split(ctx.root, "val", limit=evaluation.val_images).images
    model = SpatialTokenizer(p.architecture(ctx.params.data.image_size))
    checkpoints = ctx.path(paths.SPATIAL_CHECKPOINTS)
    accelerator = make_accelerator(p)
    callbacks = history_logger(checkpoints, ctx.logger("train"), trim=ctx.tracked)

    def on_eval(step: int) -> None:
        ctx.log_image(reconstruction_grid(model, val[: evaluation.grid_images], steps=1), f"grids/step_{step:06d}.png")

    callbacks.on_eval = on_eval
    result = train_spatial(model, train, p, seed, checkpoints, callbacks if accelerator.is_main_process else None, accelerator)
    if not accelerator.is_main_process:
        return {}
    model.save_pretrained(ctx.path(MODEL))
    scores = evaluate_renderer(model, val)
    ctx.write_plot("train_spatial_loss", read_history(checkpoints))
    ctx.write_plot("spatial_prefix", [{"k": int(k), "psnr": v} for k, v in scores["prefix_psnr_renderer"].items()])
    tracking.log_model_dir(ctx.path(MODEL), "selftok-spatial")
    return {"tokenizer": scores, "train": result.summary(), "params_millions": sum(q.numel() for q in model.parameters()) / 1e6}
