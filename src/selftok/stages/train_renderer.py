"""Stage train_renderer: train the one-step renderer on the frozen tokenizer's codes.

Outs: the Selftok arm's renderer (self-contained: tokenizer + renderer weights) and its
checkpoints (persisted, for resume); plots of the loss and the prefix PSNR.
"""

from __future__ import annotations

from selftok import paths, tracking
from selftok.data.dataset import IMAGE_TRAINING, load_split
from selftok.stages.base import Metrics, StageContext
from selftok.tokenizer.grids import reconstruction_grid
from selftok.tokenizer.metrics import evaluate_renderer
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.train import train_renderer
from selftok.training.history import history_logger, read_history
from selftok.training.loop import make_accelerator

TOKENIZER, MODEL = paths.ARMS["selftok"]["tokenizer"], paths.ARMS["selftok"]["renderer"]


def run(ctx: StageContext) -> Metrics:
    p, seed = ctx.params.renderer, ctx.params.seed
    grid_images, decode_steps = ctx.params.tokenizer.eval.grid_images, ctx.params.tokenizer.eval.decode_steps
    train = load_split(ctx.root, IMAGE_TRAINING).images
    val = load_split(ctx.root, "val", limit=ctx.params.tokenizer.eval.val_images).images
    model = SelftokTokenizer.from_pretrained(ctx.path(TOKENIZER))
    checkpoints = ctx.path(paths.RENDERER_CHECKPOINTS)
    accelerator = make_accelerator(p)
    callbacks = history_logger(checkpoints, ctx.logger("train"), trim=ctx.tracked)

    def on_eval(step: int) -> None:
        grid = reconstruction_grid(model, val[:grid_images], steps=decode_steps, seed=seed)
        ctx.log_image(grid, f"grids/step_{step:06d}.png")

    callbacks.on_eval = on_eval
    result = train_renderer(model, train, p, seed, checkpoints, callbacks if accelerator.is_main_process else None, accelerator)
    if not accelerator.is_main_process:
        return {}
    model.save_renderer(ctx.path(MODEL))
    scores = evaluate_renderer(model, val)
    ctx.write_plot("train_renderer_loss", read_history(checkpoints))
    ctx.write_plot("renderer_prefix", [{"k": int(k), "psnr": v} for k, v in scores["prefix_psnr_renderer"].items()])
    tracking.log_model_dir(ctx.path(MODEL), "selftok-renderer")
    return {"tokenizer": scores, "train": result.summary()}
