"""Params sections of the scene evaluator (`evaluator`), the prompt sets (`geneval`) and the
evaluate stage (`evaluate`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from selftok.schema import Fraction, Positive, StrictModel, fill_absent, positive_int
from selftok.training.params import PrecisionParams


class Corruption(StrictModel):
    """Image corruptions in model space ([-1, 1]); used at random strengths up to these values
    when training (augmentation) and at exactly these values for the degraded-render accuracy."""

    blur_sigma: float = Field(1.0, ge=0.0, le=3.0)
    noise_std: float = Field(0.1, ge=0.0, le=1.0)  # per-pixel Gaussian noise
    patch_noise_std: float = Field(0.1, ge=0.0, le=1.0)  # noise at 1/4 resolution, like patchy decodes
    color_shift: float = Field(0.1, ge=0.0, le=1.0)  # per-channel offset
    contrast: float = Field(0.15, ge=0.0, le=0.9)  # relative contrast change


# The judge's augmentation ceiling and the fixed corruption its degraded-render accuracy is
# measured under: part of what the evaluator and its sanity metric are, not per-run choices.
AUGMENT = Corruption()
DEGRADE = Corruption(blur_sigma=0.7, noise_std=0.06, patch_noise_std=0.06, color_shift=0.06, contrast=0.1)

# The benchmark's second judge (selftok.paths.JUDGE) trains on the evaluator's data with its
# recipe, but from another seed and at another width, so it shares none of the evaluator's
# accidents: a policy that learns the reward evaluator's blind spots raises its reward while this
# judge's score stays flat. Constants, not params keys: they define what "independent" means.
JUDGE_SEED_OFFSET = 7919  # added to the run's seed: another initialisation and augmentation stream
JUDGE_WIDTH_FACTOR = 1.5  # judge width = evaluator width x this ...
JUDGE_WIDTH_MULTIPLE = 4  # ... rounded up to a multiple of this, so always wider than the evaluator


class EvaluatorParams(PrecisionParams):
    """The scene evaluator: judge of generations and RL rewards (selftok.eval); its training loop
    takes the precision keys of every training section."""

    grid: Positive = Field(4, description="detection cells per image side; one object centre per cell")
    width: int = Field(16, ge=4, description="channels at full resolution, doubled per halving (capped at 8x)")
    epochs: Positive = Field(12, description="passes over the accepted training renders")
    batch_size: Positive = Field(64, description="images per step")
    lr: float = Field(3e-3, gt=0.0, description="peak learning rate (AdamW, 5% warmup, then cosine)")
    score_threshold: Fraction = Field(0.5, description="objectness above which a cell reports an object")
    nms_radius: Fraction = Field(0.2, description="detections closer than this (share of image side) are one object")
    match_tolerance: Fraction = Field(0.1, description="centre error (share of side) still counted as the right place")
    augment_prob: Fraction = Field(0.8, description="share of training images corrupted, at random strengths up to AUGMENT (selftok.eval.params)")
    recolor_prob: Fraction = Field(0.5, description="share of training images whose objects are repainted in other palette colours")
    checkpoint_every: Positive | None = Field(None, description="epochs between resumable checkpoints (absent: 5, capped at epochs)")
    heldout_samples_per_prompt: Positive = Field(2, description="real renders per held-out prompt in the sanity metrics")
    sanity_pairs: int = Field(256, ge=8, description="image/prompt pairs for the noise, shuffled-prompt and reward checks")

    @model_validator(mode="before")
    @classmethod
    def _checkpoints(cls, data: Any) -> Any:
        """Checkpoints every 5 epochs, or at the end of a shorter run."""
        if not isinstance(data, dict) or (epochs := positive_int(data.get("epochs") or cls.model_fields["epochs"].default)) is None:
            return data
        return fill_absent(data, {"checkpoint_every": min(5, epochs)})

    @property
    def weight_decay(self) -> float:
        """AdamW weight decay of the judge (a constant, not a params key)."""
        return 1e-4

    @property
    def warmup_fraction(self) -> float:
        """Share of the steps spent warming up (a constant, not a params key)."""
        return 0.05

    @property
    def flip(self) -> bool:
        """Half the training images mirrored (every shape is left-right symmetric): always on."""
        return True

    @property
    def augment(self) -> Corruption:
        """The strongest corruption a training image gets."""
        return AUGMENT

    @property
    def degrade(self) -> Corruption:
        """The corruption of the degraded-render accuracy (a sanity metric, so fixed)."""
        return DEGRADE


class GenevalParams(StrictModel):
    """How the prompt sets (selftok.eval.geneval.PROMPT_SETS) are cut from the space of all prompts."""

    heldout_fraction: Fraction = Field(0.4, description="share of each category's prompt groups in the never-captioned compositional set (strictly 0-1)")
    max_heldout_per_category: Positive = Field(40, description="compositional prompts per category, at most")
    select_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="share of the groups left after rl_test that choose RL's checkpoint (rl_select; 0: keep the last weights)")
    max_train_per_category: Positive | None = Field(None, description="rl_train prompts per category, at most (absent: all)")

    @model_validator(mode="after")
    def _check(self) -> GenevalParams:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be strictly between 0 and 1, got {self.heldout_fraction}")
        return self


class EvaluateParams(StrictModel):
    """The evaluate stage: how much val data, decode steps, benchmark sample count, and the promotion margin."""

    val_images: int = Field(128, ge=8, description="val images of the reconstruction table")
    decode_steps: Positive = Field(20, description="Euler steps of diffusion decodes in the reconstruction table")
    # Some categories have 2 held-out prompts, so 4 samples leave a score resting on 8 images.
    samples_per_prompt: Positive | None = Field(16, description="images per held-out prompt (null: vlm.sampling's)")
    promotion_margin: Fraction = Field(0.02, description="champion moves only for a gain of at least this (overall score)")
    promotion_sigmas: float = Field(2.0, ge=0, description="... and by this many standard errors of that gain (0: the margin alone)")
