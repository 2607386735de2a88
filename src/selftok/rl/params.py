"""params.yaml section `rl`: GRPO on visual tokens (Selftok-Zero, METHOD.md section 5).

Generations use the VLM's sampling recipe (`vlm.sampling`: CFG, temperature, top-k), the same
one evaluation uses, so the reward is measured on what the benchmark will see.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from selftok.schema import LRDecay, StrictModel

Positive = Annotated[int, Field(ge=1)]
PromptMix = Literal["balanced", "uniform"]
KLEstimator = Literal["k3", "exact"]
PolicyKind = Literal["conditional", "guided"]
Selection = Literal["last", "best_val"]


class RLParams(StrictModel):
    steps: Positive = 60
    seed: int | None = None  # prompt draws and samples; None: the global seed (which also splits the prompts)
    prompts_per_step: Positive = 8
    prompt_mix: PromptMix = "balanced"  # balanced: categories in turn (as the benchmark weighs them) | uniform
    group_size: int = Field(8, ge=2)  # G images per prompt (paper 24)
    lr: float = Field(5e-5, gt=0.0, le=1.0)
    lr_decay: LRDecay = "constant"
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    beta: float = Field(0.04, ge=0.0)  # KL weight against the frozen reference (paper 0.04-0.05)
    kl_estimator: KLEstimator = "k3"  # k3 on the sampled token | exact: summed over the visual vocabulary
    policy: PolicyKind = "conditional"  # log-probs of the gradient: conditional model | guided: the sampler's own (on-policy)
    clip: float = Field(0.2, gt=0.0, lt=1.0)  # ratio clipping, active when updates_per_batch > 1
    updates_per_batch: Positive = 1  # >1: the old-policy variant (PPO-style ratios on reused samples)
    advantage_eps: float = Field(1e-4, gt=0.0)
    # reward: one more sub-check, asked / (asked + extra objects), against clutter GenEval's rules let pass
    penalize_extra_objects: bool = False
    # pretraining mix (InstructGPT's PPO-ptx): ptx_coef x the pretraining next-token loss on ptx_batch
    # sequences of the arm's training codes, added to every update, anchors the policy on all prompts (0: off)
    ptx_coef: float = Field(0.0, ge=0.0)
    ptx_batch: Positive = 32
    # reward: - realism_coef x max(0, ratio - 1), ratio = an image's k-NN distance (evaluator features) to the real
    # renders of realism_prompts RL prompts per category over theirs among themselves (selftok.rl.realism; 0: off)
    realism_coef: float = Field(0.0, ge=0.0)
    # diversity guard (selftok.rl.guard): stop and keep the last checkpoint when, over guard_window steps, the
    # share of distinct code sequences per group falls below min_distinct, the evaluator-feature spread
    # below min_spread_ratio x that of the first window, or the per-pixel spread below
    # min_pixel_spread_ratio x that of the first window (near-copies of one scene; 0: off)
    min_distinct: float = Field(0.0, ge=0.0, le=1.0)
    min_spread_ratio: float = Field(0.0, ge=0.0, le=1.0)
    min_pixel_spread_ratio: float = Field(0.0, ge=0.0, le=1.0)
    guard_window: Positive = 10
    # realism: the samples' Frechet distance to real renders of realism_prompts RL prompts per category is logged;
    # the guard stops when, over guard_window steps, it exceeds max_frechet_ratio x that of the first window (0: off)
    max_frechet_ratio: float = Field(0.0, ge=0.0)
    realism_prompts: Positive = 8
    # carry-over validation (selftok.rl.selection): val_fraction of each category's RL prompt groups are never
    # trained on; every val_every steps the policy draws val_images images for each of them (at most val_prompts
    # per category), scored strict. select: best_val keeps the best-scoring weights (the pretrained ones
    # included), last the last (the guard may still roll back). val_fraction 0: off. A later step replaces
    # the best only when it scores higher by more than select_margin standard errors of the difference
    # (sampling noise of both scores; 0: any higher score)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    val_prompts: Positive = 8
    val_images: Positive = 16
    val_every: Positive = 20
    select: Selection = "last"
    select_margin: float = Field(0.0, ge=0.0)
    checkpoint_every: Positive = 10
    log_every: Positive = 1
    sample_every: Positive = 20  # steps between logged sample grids

    @model_validator(mode="after")
    def _check(self) -> RLParams:
        if self.select == "best_val" and self.val_fraction == 0:
            raise ValueError("select 'best_val' needs val_fraction > 0 (prompts to validate on)")
        return self
