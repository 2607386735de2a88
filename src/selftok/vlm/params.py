"""params.yaml section `vlm`: model size, sequence mix, training recipe, sampling and scoring.

Every sampling setting lives here (METHOD.md pitfall: unstated CFG, temperature, samples per
prompt and seeds make generation scores irreproducible) and is logged with the stage.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from selftok.schema import LRDecay, StrictModel
from selftok.vlm.arch import SIZES

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(ge=1)]


class TaskMix(StrictModel):
    """Relative weights of the four sequence layouts in a training batch (normalised)."""

    t2i: float = Field(0.6, ge=0.0)
    i2t: float = Field(0.3, ge=0.0)
    image: float = Field(0.05, ge=0.0)
    text: float = Field(0.05, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> TaskMix:
        if self.t2i + self.i2t + self.image + self.text <= 0:
            raise ValueError("at least one task weight must be > 0")
        return self


class SamplingParams(StrictModel):
    """Image sampling and captioning recipe (used in training samples, scores, CLI and RL)."""

    cfg_scale: float = Field(3.0, ge=0.0)  # 1: no guidance; logits = uncond + scale * (cond - uncond)
    temperature: float = Field(1.0, gt=0.0)
    min_p: Fraction = 0.1  # drop tokens whose conditional probability is < min_p x the top one (0: off)
    top_k: int = Field(0, ge=0)  # 0: the whole visual vocabulary
    samples_per_prompt: Positive = 4
    seed: int = 0
    batch_size: Positive = 64  # prompts per generate call (CFG doubles the rows)
    caption_max_tokens: Positive = 32  # captions are decoded greedily


class EvalParams(StrictModel):
    geneval_prompts_per_category: Positive = 16  # held-out prompts per GenEval category
    caption_samples: Positive = 128  # val images captioned for comprehension.caption_accuracy
    sample_prompts: Positive = 8  # val captions whose generations are logged as images


class VLMParams(StrictModel):
    """Architecture preset (+ overrides), sequence formats and the pretraining recipe."""

    size: Literal[tuple(SIZES)] = "small"  # type: ignore[valid-type]
    hidden_size: Positive | None = None  # None: the preset's value
    layers: Positive | None = None
    heads: Positive | None = None
    text_vocab_size: int = Field(512, ge=300)  # BPE vocabulary incl. the 256 byte symbols and specials
    mix: TaskMix = TaskMix()
    caption_dropout: Fraction = 0.1  # text->image samples with the caption removed (enables CFG)
    loss_on: Literal["all", "target"] = "all"  # target: only the generated modality of each layout

    steps: Positive = 3000
    batch_size: Positive = 64
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.1, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    lr_decay: LRDecay = "cosine"
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0.0)
    checkpoint_every: Positive = 250
    log_every: Positive = 25
    eval_every: Positive = 500  # sample images + val loss
    sampling: SamplingParams = SamplingParams()
    eval: EvalParams = EvalParams()

    @model_validator(mode="after")
    def _check(self) -> VLMParams:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self
