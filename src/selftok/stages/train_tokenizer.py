"""Stage train_tokenizer: train encoder + quantiser + diffusion decoder jointly, evaluate on val.

Outs: models/tokenizer (safetensors + config.json), checkpoints/tokenizer (persisted: a killed
run resumes from its last checkpoint), plots/train_tokenizer_loss.csv, plots/tokenizer_prefix.csv.
The loss history lives beside the checkpoints, so the plot survives a resume.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from selftok import tracking
from selftok.data.dataset import IMAGE_TRAINING, load_split
from selftok.stages.base import Metrics, StageContext
from selftok.tokenizer.grids import reconstruction_grid
from selftok.tokenizer.metrics import evaluate_tokenizer
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.train import Callbacks, TrainResult, make_accelerator, train_tokenizer

MODEL, CHECKPOINTS = Path("models/tokenizer"), Path("checkpoints/tokenizer")
HISTORY = "history.jsonl"


def history_logger(ctx: StageContext, checkpoints: Path, prefix: str) -> Callbacks:
    """Log metrics to MLflow and append them to the history kept with the checkpoints (on the
    tracking rank only: workers of a multi-process launch must not rewrite rank 0's file)."""
    path = checkpoints / HISTORY
    resume_step = max((int(p.name.split("_")[1]) for p in checkpoints.glob("step_*")), default=0)
    if ctx.tracked and path.is_file():  # drop rows past the checkpoint we resume from (they will be redone)
        rows = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
        path.write_text("".join(r + "\n" for r in rows))

    def on_log(step: int, logs: dict[str, float]) -> None:
        ctx.log_metrics({prefix: logs}, step=step)
        checkpoints.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps({"step": step, **logs}) + "\n")

    return Callbacks(on_log=on_log)


def write_history_csv(checkpoints: Path, out: Path) -> None:
    rows = [json.loads(line) for line in (checkpoints / HISTORY).read_text().splitlines()] if (checkpoints / HISTORY).is_file() else []
    write_csv(out, rows)


def write_csv(out: Path, rows: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for row in rows for k in row)) or ["step"]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def train_summary(result: TrainResult) -> dict[str, float]:
    return {"steps": result.steps, "resumed_from": result.resumed_from, "seconds": result.seconds, "steps_per_s": result.steps_per_s}


def run(ctx: StageContext) -> Metrics:
    p, seed = ctx.params.tokenizer, ctx.params.seed
    train = load_split(ctx.root, IMAGE_TRAINING).images
    val = load_split(ctx.root, "val", limit=p.eval.val_images).images
    model = SelftokTokenizer(p.architecture(ctx.params.data.image_size, ctx.root))
    checkpoints = ctx.path(CHECKPOINTS)
    accelerator = make_accelerator()
    callbacks = history_logger(ctx, checkpoints, "train")

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
    write_history_csv(checkpoints, ctx.path("plots/train_tokenizer_loss.csv"))
    write_csv(ctx.path("plots/tokenizer_prefix.csv"), [{"k": int(k), "psnr": v} for k, v in scores["prefix_psnr"].items()])
    write_csv(ctx.path("plots/tokenizer_position_perplexity.csv"), [{"position": i + 1, "perplexity": v} for i, v in enumerate(perplexity)])
    tracking.log_model_dir(ctx.path(MODEL), "selftok-tokenizer")
    return {"tokenizer": scores, "train": train_summary(result)}
