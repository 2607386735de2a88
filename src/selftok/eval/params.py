"""Params sections of the scene evaluator (`evaluator`) and the prompt sets (`geneval`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from selftok.schema import StrictModel

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class Corruption(StrictModel):
    """Image corruptions in model space ([-1, 1]); used at random strengths up to these values
    when training (augmentation) and at exactly these values for the degraded-render accuracy."""

    blur_sigma: float = Field(1.0, ge=0.0, le=3.0)
    noise_std: float = Field(0.1, ge=0.0, le=1.0)  # per-pixel Gaussian noise
    patch_noise_std: float = Field(0.1, ge=0.0, le=1.0)  # noise at 1/4 resolution, like patchy decodes
    color_shift: float = Field(0.1, ge=0.0, le=1.0)  # per-channel offset
    contrast: float = Field(0.15, ge=0.0, le=0.9)  # relative contrast change


class EvaluatorParams(StrictModel):
    grid: int = Field(4, ge=1)  # detection cells per image side; one object centre per cell at most
    width: int = Field(16, ge=4)  # channels at full resolution (doubled per halving, capped at 8x)
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    warmup_fraction: Fraction = 0.05
    score_threshold: Fraction = 0.5
    nms_radius: Fraction = 0.2  # detections closer than this (fraction of image side) are one object
    match_tolerance: Fraction = 0.1  # centre error (fraction of side) still counting as the same place
    flip: bool = True
    augment_prob: Fraction = 0.8  # share of training images that get random corruptions
    recolor_prob: Fraction = 0.5  # share of training images whose objects are repainted in other palette colours
    augment: Corruption = Corruption()
    degrade: Corruption = Corruption(blur_sigma=0.7, noise_std=0.06, patch_noise_std=0.06, color_shift=0.06, contrast=0.1)
    checkpoint_every: int = Field(5, ge=1)  # epochs between resumable checkpoints
    heldout_samples_per_prompt: int = Field(2, ge=1)  # real renders per held-out prompt (sanity metric)
    sanity_pairs: int = Field(256, ge=8)  # image/prompt pairs for the noise, shuffled and reward checks


class GenevalParams(StrictModel):
    """How the training and held-out prompt sets are cut from the space of all prompts."""

    heldout_fraction: Fraction = 0.4
    max_heldout_per_category: int = Field(40, ge=1)
    max_train_per_category: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GenevalParams:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be strictly between 0 and 1, got {self.heldout_fraction}")
        return self
