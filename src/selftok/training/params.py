"""The params every step-trained model shares: its loop's knobs (selftok.training.loop.LoopConfig).

The log, evaluation and checkpoint intervals steer only what is recorded, never the weights, so
the default profile leaves them out: each is a fixed interval per model, or once at the end of a
shorter run, and a profile sets one only to see more of a short run (the smoke profile does).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from selftok.schema import LRDecay, Positive, StrictModel, fill_absent, positive_int

GRAD_CLIP = 1.0  # global gradient-norm clip of every loop
MixedPrecision = Literal["no", "bf16", "fp16"]  # accelerate's mixed_precision (autocast; weights stay fp32)


class PrecisionParams(StrictModel):
    """The numeric precision keys of every training section, accelerate's loops and the others
    alike (selftok.training.precision)."""

    mixed_precision: MixedPrecision | None = Field(None, description="no | bf16 | fp16 autocast on GPUs (absent: bf16 on GPU); CPUs always run fp32")
    tf32: bool | None = Field(None, description="TF32 matmuls and convolutions on Ampere+ GPUs (absent: torch's defaults)")


class LoopParams(PrecisionParams):
    """The knobs of the shared training loop, by name."""

    # Intervals used when a section leaves its own out, capped at the run's length.
    LOG_EVERY: ClassVar[int] = 25
    EVAL_EVERY: ClassVar[int] = 500
    CHECKPOINT_EVERY: ClassVar[int] = 200

    steps: Positive = Field(2000, description="optimizer steps")
    batch_size: Positive = Field(64, description="images (or sequences) per step")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="peak learning rate")
    lr_decay: LRDecay = Field("cosine", description="after warmup: cosine (to 10%) | constant")
    warmup_steps: int = Field(100, ge=0, description="linear warmup")
    log_every: Positive | None = Field(None, description="steps between logged metrics (absent: 25, capped at steps)")
    eval_every: Positive | None = Field(None, description="steps between image grids and evaluations (absent: a per-model interval, capped at steps)")
    checkpoint_every: Positive | None = Field(None, description="steps between resumable checkpoints (absent: a per-model interval, capped at steps)")

    @property
    def grad_clip(self) -> float:
        """Gradient-norm clip of every loop (a constant, not a params key)."""
        return GRAD_CLIP

    @classmethod
    def inherited(cls, data: Any) -> Any:
        """Raw input with the values a section takes from elsewhere when left out (none here)."""
        return data

    @model_validator(mode="before")
    @classmethod
    def _intervals(cls, data: Any) -> Any:
        """The intervals a section leaves out: its model's own, or the whole run when it is shorter."""
        data = cls.inherited(data)
        if not isinstance(data, dict):
            return data
        if (steps := positive_int(data.get("steps") or cls.model_fields["steps"].default)) is None:
            return data
        caps = {"log_every": cls.LOG_EVERY, "eval_every": cls.EVAL_EVERY, "checkpoint_every": cls.CHECKPOINT_EVERY}
        return fill_absent(data, {key: min(cap, steps) for key, cap in caps.items()})
