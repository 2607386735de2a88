"""Stage train_tokenizer: train encoder + quantiser + diffusion decoder jointly, evaluate on val.

Outs: the Selftok arm's tokenizer (safetensors + config.json) and its checkpoints (persisted: a
killed run resumes from its last checkpoint); plots of the loss, the prefix PSNR and the
per-position perplexity. The loss history lives beside the checkpoints, so the plot survives a resume.
"""

from __future__ import annotations

from selftok import paths, tracking
from selftok.data.dataset import IMAGE_TRAINING, load_split
from selftok.stages.base import Metrics, StageContext
from selftok.tokenizer.grids import reconstruction_grid
from selftok.tokenizer.metrics import evaluate_tokenizer
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.train import train_tokenizer
from selftok.training.history import history_logger, read_history
from selftok.training.loop import make_accelerator

MODEL = paths.ARMS["selftok"]["tokenizer"]


def run(ctx: StageContext) -> Metrics:
    p, seed = ctx.params.tokenizer, ctx.params.seed
    train = load_split(ctx.root, IMAGE_TRAINING).images
    val = load_split(ctx.root, "val", limit=p.eval.val_images).images
    model = SelftokTokenizer(p.architecture(ctx.params.data.image_size, ctx.root))
    checkpoints = ctx.path(paths.TOKENIZER_CHECKPOINTS)
    accelerator = make_accelerator(p)
    callbacks = history_logger(checkpoints, ctx.logger("train"), trim=ctx.tracked)

    def on_eval(step: int) -> None:
        grid = reconstruction_grid(model, val[: p.eval.grid_images], steps=p.eval.decode_steps, seed=seed)
        ctx.log_image(grid, f"grids/step_{step:06d}.png")

    callbacks.on_eval = on_eval
    result = train_tokenizer(model, train, p, seed, checkpoints, callbacks if accelerator.is_main_process else None, accelerator)
    if not accelerator.is_main_process:
        return {}
    model.save_pretrained(ctx.path(MODEL))
    scores = evaluate_tokenizer(model, val, p.eval.decode_steps, p.eval.prefix_steps, seed=seed)
    perplexity = scores.pop("perplexity_per_position")
    ctx.write_plot("train_tokenizer_loss", read_history(checkpoints))
    ctx.write_plot("tokenizer_prefix", [{"k": int(k), "psnr": v} for k, v in scores["prefix_psnr"].items()])
    ctx.write_plot("tokenizer_position_perplexity", [{"position": i + 1, "perplexity": v} for i, v in enumerate(perplexity)])
    tracking.log_model_dir(ctx.path(MODEL), "selftok-tokenizer")
    return {"tokenizer": scores, "train": result.summary()}
