"""Stage train_renderer: train the one-step renderer on the frozen tokenizer's codes.

Outs: models/renderer (self-contained: tokenizer + renderer weights), checkpoints/renderer
(persisted, for resume), plots/train_renderer_loss.csv, plots/renderer_prefix.csv.
"""

from __future__ import annotations

from pathlib import Path

from selftok import tracking
from selftok.data.dataset import IMAGE_TRAINING, load_split
from selftok.stages.base import Metrics, StageContext
from selftok.stages.train_tokenizer import MODEL as TOKENIZER
from selftok.stages.train_tokenizer import history_logger, train_summary, write_csv, write_history_csv
from selftok.tokenizer.grids import reconstruction_grid
from selftok.tokenizer.metrics import evaluate_renderer
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.train import make_accelerator, train_renderer

MODEL, CHECKPOINTS = Path("models/renderer"), Path("checkpoints/renderer")


def run(ctx: StageContext) -> Metrics:
    p, seed = ctx.params.renderer, ctx.params.seed
    grid_images, decode_steps = ctx.params.tokenizer.eval.grid_images, ctx.params.tokenizer.eval.decode_steps
    train = load_split(ctx.root, IMAGE_TRAINING).images
    val = load_split(ctx.root, "val", limit=ctx.params.tokenizer.eval.val_images).images
    model = SelftokTokenizer.from_pretrained(ctx.path(TOKENIZER))
    checkpoints = ctx.path(CHECKPOINTS)
    accelerator = make_accelerator()
    callbacks = history_logger(ctx, checkpoints, "train")

    def on_eval(step: int) -> None:
        grid = reconstruction_grid(model, val[:grid_images], steps=decode_steps, seed=seed)
        ctx.log_image(grid, f"grids/step_{step:06d}.png")

    callbacks.on_eval = on_eval
    result = train_renderer(model, train, p, seed, checkpoints, callbacks if accelerator.is_main_process else None, accelerator)
    if not accelerator.is_main_process:
        return {}
    model.save_renderer(ctx.path(MODEL))
    scores = evaluate_renderer(model, val)
    write_history_csv(checkpoints, ctx.path("plots/train_renderer_loss.csv"))
    write_csv(ctx.path("plots/renderer_prefix.csv"), [{"k": int(k), "psnr": v} for k, v in scores["prefix_psnr_renderer"].items()])
    tracking.log_model_dir(ctx.path(MODEL), "selftok-renderer")
    return {"tokenizer": scores, "train": train_summary(result)}
