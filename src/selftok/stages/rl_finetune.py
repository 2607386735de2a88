"""Stage `rl_finetune@ARM`: the arm's pretrained VLM -> its RL model by GRPO on the rl_train prompt set.

Selftok arm: models/vlm -> models/vlm_rl; the spatial control arm: models/vlm_spatial ->
models/vlm_rl_spatial, with the same rewards, prompts and recipe (selftok.stages.arms).

Rewards come from the scene evaluator's reward API on rendered images; the benchmark's prompt
sets (rl_test, compositional) are never used here. With ``rl.ptx_coef > 0`` each update also takes the
pretraining loss on the arm's training codes (InstructGPT's PPO-ptx). The diversity guard
(selftok.rl.guard) stops a run whose samples collapse or leave the data (their distance to real
renders of RL prompts) and keeps the checkpoint from before. The rl_select prompts (none when
``geneval.select_fraction`` is 0) score the policy as it trains, and the weights that scored best
there are kept (selftok.rl.selection). The result is registered as a new
version of the arm's VLM model (`selftok-vlm` for Selftok); the `evaluate` stage scores it
against the pretrained model on the benchmark's prompt sets (rl_test, compositional) with the same
sampling recipe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from selftok import paths, tracking
from selftok.data.codes import load_codes
from selftok.data.dataset import to_uint8
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.geneval import Record, per_category, prompt_sets, real_renders
from selftok.rl.selection import best_entry
from selftok.rl.trainer import RLResult, RLRun, evaluator_reward, pretraining_loss, train_grpo
from selftok.stages.arms import Arm, serving_models, stage_arm
from selftok.stages.base import Metrics, StageContext
from selftok.viz import image_grid
from selftok.vlm.decode import reference_images, render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.scores import DecodeFn, generation
from selftok.vlm.train import VLMTask

log = logging.getLogger(__name__)
Rows = list[dict[str, float]]


def run(ctx: StageContext) -> Metrics:
    arm, params = stage_arm(ctx), ctx.params.rl
    for folder in (arm.vlm, Path(paths.EVALUATOR)):
        if not (ctx.path(folder) / "config.json").is_file():
            raise FileNotFoundError(f"{ctx.path(folder)}: missing; run the stage that makes it first")
    tokenizer = arm.load_tokenizer(ctx.root, with_renderer=True)  # names a missing model folder
    decode = render_fn(tokenizer)
    evaluator = SceneEvaluator.load(ctx.path(paths.EVALUATOR))
    vlm = SelftokVLM.from_pretrained(ctx.path(arm.vlm))
    seed = ctx.params.seed if params.seed is None else params.seed
    torch.manual_seed(seed)
    sets = prompt_sets(ctx.params.data, ctx.params.seed, ctx.params.geneval)
    prompts, aside = sets["rl_train"], sets["rl_select"]  # aside: carry-over validation (selftok.rl.selection)
    if not prompts:
        raise ValueError("no rl_train prompts: the scene world is too small to leave RL prompt groups (see geneval.heldout_fraction)")
    # real renders of RL prompts through the tokenizer: how far samples stray from the data (logged; the guard's realism check)
    renders = real_renders(ctx.params.data, per_category(prompts, params.realism_prompts), params.group_size)
    ptx = pretraining_loss(_pretraining_task(ctx, arm, vlm), params.ptx_batch, seed) if params.ptx_coef > 0 else None
    result = train_grpo(
        RLRun(lm=vlm.lm, tokenizer=vlm.tokenizer, decode=decode, reward=evaluator_reward(evaluator, params.penalize_extra_objects),
              features=evaluator.features, prompts=prompts, sampling=ctx.params.vlm.sampling, seed=seed, ptx=ptx,
              real_features=evaluator.features(reference_images(tokenizer, decode, renders)),
              validate=_validation(ctx, vlm, decode, evaluator, aside, seed) if aside else None),
        params,
        ctx.path(arm.rl_checkpoints),
        on_log=ctx.logger("rl"),
        on_samples=lambda step, images: ctx.log_image(image_grid(to_uint8(images), columns=params.group_size, scale=3),
                                                      f"rl_samples/step_{step:05d}.png"),
    )
    ctx.log_metrics({"rl_seconds": result.seconds})
    if result.collapse:
        ctx.set_tag("rl.collapse", f"step {result.collapsed_at}: {result.collapse}; kept step {result.steps}")
    if result.selected is not None:
        ctx.set_tag("rl.selected", f"step {result.selected}: best on carry-over validation")
    vlm.lm.eval()
    vlm.save_pretrained(ctx.path(arm.vlm_rl))
    tracking.log_model_dir(ctx.path(arm.vlm_rl), arm.registered_vlm, serving_models(ctx, arm))
    return {"rl": rl_summary(result, ptx is not None), **({"validation": validation_summary(result)} if result.validation else {})}


def _pretraining_task(ctx: StageContext, arm: Arm, vlm: SelftokVLM) -> VLMTask:
    """The pretraining objective on the arm's training codes, as pretrain_vlm saw them (rl.ptx_coef)."""
    train = load_codes(ctx.root, "train", folder=arm.codes)
    return VLMTask(lm=vlm.lm, tokenizer=vlm.tokenizer, captions=vlm.tokenizer.encode_text(train.captions), codes=train.codes,
                   params=ctx.params.vlm, device=vlm.lm.device)


def _validation(
    ctx: StageContext, vlm: SelftokVLM, decode: DecodeFn, evaluator: SceneEvaluator, aside: list[Record], seed: int
) -> Callable[[], dict[str, float]]:
    """The policy's scores on (at most ``rl.val_prompts`` per category of) the rl_select prompts."""
    params = ctx.params.rl
    records = per_category(aside, params.val_prompts)
    sampling = ctx.params.vlm.sampling.model_copy(update={"samples_per_prompt": params.val_images, "seed": seed})
    log.info("rl: %d rl_select prompts validate carry-over", len(records))

    def validate() -> dict[str, float]:
        summary, _ = generation(vlm.lm, vlm.tokenizer, records, decode, evaluator, sampling)
        return {"overall": summary["overall"], "strict": summary["overall_strict"], "strict_se": summary["overall_strict_se"]}

    return validate


# (logged key, window) pairs the metrics report: the first 5 steps and the last 5 kept
ENDS = (("reward", "first5"), ("reward", "last5"), ("kl", "last5"), ("kl_exact", "last5"), ("distinct_codes", "last5"),
        ("frechet_to_real", "first5"), ("frechet_to_real", "last5"), ("extra_objects", "last5"), ("feature_spread", "first5"),
        ("feature_spread", "last5"), ("pixel_spread", "first5"), ("pixel_spread", "last5"))


def _mean(rows: Rows, key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


def rl_summary(result: RLResult, with_ptx: bool) -> dict[str, float | int | None]:
    """The training curves' ends: the first 5 steps, and the last 5 up to the weights kept (by the
    guard or by selection); with ``with_ptx``, the pretraining loss too."""
    kept = result.history[: max(0, result.steps - result.resumed_from)]
    windows = {"first5": result.history[:5], "last5": kept[-5:]}
    summary = {"steps": result.steps, "collapsed_at": result.collapsed_at, **{f"{k}_{w}": _mean(windows[w], k) for k, w in ENDS}}
    if with_ptx:
        summary["ptx_loss_last5"] = _mean(windows["last5"], "ptx_loss")
    shown = ["-" if r is None else f"{r:.3f}" for r in (summary["reward_first5"], summary["reward_last5"])]  # no kept steps: no last reward
    log.info("rl: %d steps in %.0fs, kept the weights of step %d; training reward %s (first 5 steps) -> %s (last 5 kept)",
             result.resumed_from + len(result.history), result.seconds, result.steps, *shown)
    return summary


def validation_summary(result: RLResult) -> dict[str, float | int | None]:
    """Carry-over scores: of the pretrained policy, the last validated step, and the best (the
    weights selection keeps), with its step."""
    first, last, best = result.validation[0], result.validation[-1], best_entry(result.validation)
    assert best is not None  # the first validation is always a record
    return {"strict_first": first["strict"], "strict_last": last["strict"], "last_step": last["step"],
            "strict_best": best["strict"], "best_step": best["step"], "selected_step": result.selected,
            "overall_first": first["overall"], "overall_last": last["overall"]}
