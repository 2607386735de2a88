"""params.yaml section `rl`: GRPO on visual tokens (Selftok-Zero; docs/method.md).

Generations use the VLM's sampling recipe (`vlm.sampling`: CFG, temperature, top-k), the same
one evaluation uses, so the reward is measured on what the benchmark will see. Each batch of
samples makes one update; the gradient is the conditional model's (off-policy to the guided
sampler), the KL is the k3 estimate on the drawn tokens, prompts come in balanced categories,
and with validation on, the weights that validated best are kept (docs/experiments.md, "RL
recipes" and "Selection of the RL weights").
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from selftok.schema import Fraction, Positive, fill_absent
from selftok.training.params import PrecisionParams


class RLParams(PrecisionParams):
    """The GRPO recipe, its reward, the diversity guard and carry-over validation; sampling and
    updates take the precision keys of every training section."""

    steps: Positive = Field(300, description="RL steps, at most (the guard may stop the run earlier)")
    seed: int | None = Field(None, description="RL's prompt draws and samples (absent: the global seed, which also splits the prompts)")
    prompts_per_step: Positive = Field(8, description="prompts per step, categories in turn (as the benchmark weighs them)")
    group_size: int = Field(16, ge=2, description="images per prompt (paper 24)")
    lr: float = Field(2e-4, gt=0.0, le=1.0, description="learning rate, constant after warmup")
    warmup_steps: int = Field(0, ge=0, description="linear warmup")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    beta: float = Field(0.04, ge=0.0, description="KL weight to the frozen pretrained model (k3 estimate; paper 0.04-0.05)")
    penalize_extra_objects: bool = Field(True, description="reward: + a sub-check against objects nobody asked for")
    ptx_coef: float = Field(0.3, ge=0.0, description="pretraining mix (PPO-ptx): + this x next-token loss on ptx_batch codes (0: off)")
    ptx_batch: Positive = Field(32, description="training sequences of the pretraining mix per update")
    # diversity guard (selftok.rl.guard): stop, keeping the checkpoint from before the window, when over
    # guard_window steps one of these falls (ratios against the run's own first window; 0: off)
    min_distinct: Fraction = Field(0.6, description="guard: share of distinct code sequences per group")
    min_spread_ratio: Fraction = Field(0.15, description="guard: evaluator-feature spread within groups")
    min_pixel_spread_ratio: Fraction = Field(0.6, description="guard: per-pixel spread within groups")
    guard_window: Positive = Field(20, description="guard: steps averaged")
    max_frechet_ratio: float = Field(3.0, ge=0.0, description="guard: Frechet distance to real renders, upper bound (0: off)")
    realism_prompts: Positive = Field(8, description="RL prompts per category whose real renders the Frechet distance uses")
    # carry-over validation (selftok.rl.selection): the rl_select prompt groups (geneval.select_fraction) are never
    # trained on; every val_every steps the policy draws val_images per rl_select prompt, scored strict
    val_prompts: Positive = Field(8, description="validation: rl_select prompts per category, at most")
    val_images: Positive = Field(16, description="validation: images per rl_select prompt")
    val_every: Positive = Field(20, description="validation: steps between scores")
    select_margin: float = Field(2.0, ge=0.0, description="a later step beats the best only by > this many standard errors")
    checkpoint_every: Positive = Field(10, description="steps between checkpoints (also where the guard can roll back to)")
    sample_every: Positive | None = Field(None, description="steps between logged sample grids (absent: val_every)")

    @model_validator(mode="before")
    @classmethod
    def _sample_every(cls, data: Any) -> Any:
        """Sample grids come with validation scores unless asked otherwise."""
        if isinstance(data, dict):
            return fill_absent(data, {"sample_every": data.get("val_every") or cls.model_fields["val_every"].default})
        return data
