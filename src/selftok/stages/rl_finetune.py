"""Stage `rl_finetune@ARM`: the arm's pretrained VLM -> its RL model by GRPO on the RL (train) prompt set.

Selftok arm: models/vlm -> models/vlm_rl; the spatial control arm: models/vlm_spatial ->
models/vlm_rl_spatial, with the same rewards, prompts and recipe (selftok.stages.arms).

Rewards come from the scene evaluator's reward API on rendered images; the benchmark's
held-out prompts are never used here. With ``rl.ptx_coef > 0`` each update also takes the
pretraining loss on the arm's training codes (InstructGPT's PPO-ptx); with ``rl.realism_coef > 0``
the reward loses a penalty for images far from real renders of RL prompts (selftok.rl.realism).
The diversity guard (selftok.rl.guard) stops a run whose samples collapse or leave the data and
keeps the checkpoint from before. With ``rl.val_fraction > 0`` a share of RL's own prompt groups
is never trained on and scores the policy as it trains; ``rl.select: best_val`` keeps the weights
that scored best there (selftok.rl.selection). The result is registered as a new version of the arm's VLM
model (`selftok-vlm` for Selftok); the `evaluate` stage scores it against the pretrained model on
the held-out prompts with the same sampling recipe.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from selftok import tracking
from selftok.data.codes import load_codes
from selftok.data.dataset import to_uint8
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.geneval import prompt_sets, real_renders, scene_config, split_groups
from selftok.rl.realism import RealismPenalty
from selftok.rl.selection import best_entry
from selftok.rl.trainer import RLResult, RLRun, evaluator_reward, pretraining_loss, train_grpo
from selftok.stages.arms import stage_arm
from selftok.stages.base import Metrics, StageContext
from selftok.viz import image_grid
from selftok.vlm.decode import reference_images, render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.scores import generation, per_category
from selftok.vlm.train import VLMTask

log = logging.getLogger(__name__)
EVALUATOR = Path("models/evaluator")


def run(ctx: StageContext) -> Metrics:
    arm = stage_arm(ctx)
    for folder in (arm.vlm, EVALUATOR):
        if not (ctx.path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{ctx.path(folder)}: missing; run the stage that makes it first")
    tokenizer = arm.load_tokenizer(ctx.root, with_renderer=True)  # names a missing model folder
    decode = render_fn(tokenizer)
    evaluator = SceneEvaluator.load(ctx.path(EVALUATOR))
    vlm = SelftokVLM.from_pretrained(ctx.path(arm.vlm))
    params = ctx.params.rl
    seed = ctx.params.seed if params.seed is None else params.seed
    torch.manual_seed(seed)

    def on_samples(step: int, images: torch.Tensor) -> None:
        ctx.log_image(image_grid(to_uint8(images), columns=params.group_size, scale=3), f"rl_samples/step_{step:05d}.png")

    ptx = None
    if params.ptx_coef > 0:  # the pretraining objective on the arm's training codes, as pretrain_vlm saw them
        train = load_codes(ctx.root, "train", folder=arm.codes)
        task = VLMTask(vlm.lm, vlm.tokenizer, vlm.tokenizer.encode_text(train.captions), train.codes, ctx.params.vlm, vlm.lm.device)
        ptx = pretraining_loss(task, params.ptx_batch, seed)
    # carry-over validation (selftok.rl.selection): prompt groups set aside from RL's own, split by the global seed
    prompts, aside = split_groups(scene_config(ctx.params), prompt_sets(ctx.params)["train"], params.val_fraction, ctx.params.seed)
    validate = None
    if params.val_fraction > 0 and not aside:
        raise ValueError(f"rl.val_fraction {params.val_fraction}: no category has two prompt groups to train on one and validate on another")
    if aside:
        val_records = per_category(aside, params.val_prompts)
        val_sampling = ctx.params.vlm.sampling.model_copy(update={"samples_per_prompt": params.val_images, "seed": seed})
        log.info("rl: %d prompts to train on, %d set aside to validate carry-over", len(prompts), len(val_records))

        def validate() -> dict[str, float]:
            summary, _ = generation(vlm.lm, vlm.tokenizer, val_records, decode, evaluator, val_sampling)
            return {"overall": summary["overall"], "strict": summary["overall_strict"], "strict_se": summary["overall_strict_se"]}

    # real renders of RL prompts through the tokenizer: how far samples stray from the data (logged; the guard's realism check)
    renders = real_renders(ctx.params, per_category(prompts, params.realism_prompts), params.group_size)
    real = evaluator.features(reference_images(tokenizer, decode, renders))
    realism = RealismPenalty(real, params.realism_coef) if params.realism_coef > 0 else None
    result = train_grpo(
        RLRun(vlm.lm, vlm.tokenizer, decode, evaluator_reward(evaluator, params.penalize_extra_objects, realism),
              evaluator.features, prompts, ctx.params.vlm.sampling, seed, ptx, real, validate),
        params,
        ctx.path(arm.rl_checkpoints),
        on_log=lambda step, logs: ctx.log_metrics({"rl": logs}, step),
        on_samples=on_samples,
    )
    ctx.log_metrics({"rl_seconds": result.seconds})
    if result.collapse:
        ctx.set_tag("rl.collapse", f"step {result.collapsed_at}: {result.collapse}; kept step {result.steps}")
    if result.selected is not None:
        ctx.set_tag("rl.selected", f"step {result.selected}: best on carry-over validation")
    vlm.lm.eval()
    vlm.save_pretrained(ctx.path(arm.vlm_rl))
    tracking.log_model_dir(ctx.path(arm.vlm_rl), arm.registered_vlm)
    kept = result.history[: max(0, result.steps - result.resumed_from)]  # up to the weights kept (guard or selection)
    first, last = result.history[:5], kept[-5:]

    def mean(rows: list[dict[str, float]], key: str) -> float | None:
        return sum(r[key] for r in rows) / len(rows) if rows else None

    reward_first, reward_last = mean(first, "reward"), mean(last, "reward")
    shown = ["-" if r is None else f"{r:.3f}" for r in (reward_first, reward_last)]  # no kept steps: no last reward
    log.info("rl: %d steps in %.0fs, kept the weights of step %d; training reward %s (first 5 steps) -> %s (last 5 kept)",
             result.resumed_from + len(result.history), result.seconds, result.steps, *shown)
    return {
        "rl": {
            "steps": result.steps,
            "collapsed_at": result.collapsed_at,
            "reward_first5": reward_first,
            "reward_last5": reward_last,
            "kl_last5": mean(last, "kl"),
            "kl_exact_last5": mean(last, "kl_exact"),
            "distinct_codes_last5": mean(last, "distinct_codes"),
            "frechet_to_real_first5": mean(first, "frechet_to_real"),
            "frechet_to_real_last5": mean(last, "frechet_to_real"),
            "extra_objects_last5": mean(last, "extra_objects"),
            "feature_spread_first5": mean(first, "feature_spread"),
            "feature_spread_last5": mean(last, "feature_spread"),
            "pixel_spread_first5": mean(first, "pixel_spread"),
            "pixel_spread_last5": mean(last, "pixel_spread"),
            **({"realism_ratio_first5": mean(first, "realism_ratio"), "realism_ratio_last5": mean(last, "realism_ratio")}
               if realism is not None else {}),
            **({"ptx_loss_last5": mean(last, "ptx_loss")} if ptx is not None else {}),
        },
        **({"validation": validation_summary(result)} if result.validation else {}),
    }


def validation_summary(result: RLResult) -> dict[str, float | int | None]:
    """Carry-over scores: of the pretrained policy, the last validated step, and the best (as
    ``rl.select: best_val`` chooses it), with its step."""
    first, last, best = result.validation[0], result.validation[-1], best_entry(result.validation)
    assert best is not None  # the first validation is always a record
    return {"strict_first": first["strict"], "strict_last": last["strict"], "last_step": last["step"],
            "strict_best": best["strict"], "best_step": best["step"], "selected_step": result.selected,
            "overall_first": first["overall"], "overall_last": last["overall"]}
