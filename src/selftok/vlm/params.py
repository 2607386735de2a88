"""params.yaml section `vlm`: model size, sequence mix, training recipe, sampling and scoring.

Every sampling setting lives here (unstated CFG, temperature, samples per
prompt and seeds make generation scores irreproducible) and is logged with the stage.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from selftok.schema import Fraction, Positive, StrictModel
from selftok.training.params import LoopParams
from selftok.vlm.arch import SIZES

BETAS = (0.9, 0.95)  # AdamW betas of VLM pretraining (Llama's)


class TaskMix(StrictModel):
    """Relative weights of the four sequence layouts in a training batch (normalised)."""

    t2i: float = Field(0.6, ge=0.0, description="caption -> image")
    i2t: float = Field(0.3, ge=0.0, description="image -> caption")
    image: float = Field(0.05, ge=0.0, description="image alone")
    text: float = Field(0.05, ge=0.0, description="caption alone")

    @model_validator(mode="after")
    def _check(self) -> TaskMix:
        if self.t2i + self.i2t + self.image + self.text <= 0:
            raise ValueError("at least one task weight must be > 0")
        return self


class SamplingParams(StrictModel):
    """Image sampling and captioning recipe (used in training samples, scores, CLI and RL)."""

    cfg_scale: float = Field(3.0, ge=0.0, description="logits = uncond + scale x (cond - uncond); 1: no guidance")
    temperature: float = Field(1.0, gt=0.0, description="softmax temperature")
    min_p: Fraction = Field(0.1, description="tokens below min_p x the top conditional probability are never drawn (0: off)")
    top_k: int = Field(0, ge=0, description="0: every visual token")
    samples_per_prompt: Positive = Field(4, description="images per prompt of generation scores and samples")
    seed: int = Field(0, description="sampling seed")
    batch_size: Positive = Field(64, description="prompts per generate call (CFG doubles the rows)")
    caption_max_tokens: Positive = Field(32, description="captions are decoded greedily up to this length")


class EvalParams(StrictModel):
    """What pretrain_vlm scores and logs after training."""

    geneval_prompts_per_category: Positive = Field(16, description="prompts per GenEval category in each benchmark set (rl_test, compositional)")
    caption_samples: Positive = Field(128, description="val images captioned for comprehension.caption_accuracy")
    sample_prompts: Positive = Field(8, description="val captions whose generations are logged as images")


class LMExpected(StrictModel):
    """The architecture a pretrained ``vlm.init_from`` is expected to have, every key stated:
    what a dry run counts from when its config cannot be read here, and what the real config is
    checked against when it can."""

    hidden_size: Positive = Field(description="model width")
    layers: Positive = Field(description="decoder layers")
    heads: Positive = Field(description="attention heads")
    kv_heads: Positive = Field(description="key/value heads (grouped-query attention)")
    intermediate_size: Positive = Field(description="SwiGLU width")
    vocab_size: Positive = Field(description="its text vocabulary, before the visual tokens are added")
    tie_word_embeddings: bool = Field(description="one matrix for the embedding and the output head")
    max_positions: Positive = Field(description="longest sequence it was trained on")

    def mismatches(self, config: object) -> list[str]:
        """``vlm.expected.KEY (want) != (got)`` for each key a real transformers config contradicts."""
        names = {"layers": "num_hidden_layers", "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
                 "max_positions": "max_position_embeddings"}
        out = []
        for key in LMExpected.model_fields:
            got = getattr(config, names.get(key, key), None)
            if got is not None and got != getattr(self, key):
                out.append(f"vlm.expected.{key} {getattr(self, key)!r} != {got!r} in the model's config")
        return out


class VLMParams(LoopParams):
    """Architecture preset (+ overrides), sequence formats and the pretraining recipe."""

    CHECKPOINT_EVERY: ClassVar[int] = 250

    size: Literal[tuple(SIZES)] = Field("small", description="tiny | small | base | large (selftok.vlm.arch.SIZES)")  # type: ignore[valid-type]
    hidden_size: Positive | None = Field(None, description="absent: the preset's")
    layers: Positive | None = Field(None, description="absent: the preset's")
    heads: Positive | None = Field(None, description="absent: the preset's")
    text_vocab_size: int = Field(512, ge=300, description="byte-level BPE on the training captions (256 bytes and specials included)")
    mix: TaskMix = Field(TaskMix(), description="layout weights per batch (normalised)")
    caption_dropout: Fraction = Field(0.1, description="t2i samples without caption: the unconditional branch of CFG")
    loss_on: Literal["all", "target"] = Field("all", description="all | target (only the generated modality of each layout)")
    steps: Positive = Field(3000, description="optimizer steps")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW weight decay on matrices")
    sampling: SamplingParams = Field(SamplingParams(), description="every sampling setting of scores, samples, CLI and RL")
    init_from: str | None = Field(None, description="a transformers causal LM (hub id or local folder) to start from, with its own text tokenizer (absent: size preset, our BPE)")
    expected: LMExpected | None = Field(None, description="init_from's architecture when its config cannot be read here")
    gradient_checkpointing: bool | None = Field(None, description="recompute activations in the backward pass (absent: off)")
    eval: EvalParams = Field(EvalParams(), description="measurements after training")

    @property
    def betas(self) -> tuple[float, float]:
        """AdamW betas of pretraining: Llama's (a constant, not a params key)."""
        return BETAS
