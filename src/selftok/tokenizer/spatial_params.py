"""params.yaml section `control.spatial`: the spatial control tokenizer (kept free of torch, so
loading params stays fast; the model itself is selftok.tokenizer.spatial).

The control differs from Selftok only in its tokens, so its recipe is Selftok's: K, codebook,
EMA, prefix dropout, batch and schedule are the `tokenizer` section's, its budget is
`tokenizer.steps + renderer.steps`, and its pixel loss is weighted like the renderer's. A key set
here overrides the shared value (K and the codebook must still match: checked by Params).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from selftok.schema import EdgeWeight, Fraction, LRDecay, Positive, StrictModel
from selftok.tokenizer.params import RendererParams, SizeOverrides, TokenizerParams
from selftok.training.params import LoopParams

if TYPE_CHECKING:
    from selftok.tokenizer.spatial import SpatialConfig

# Named sizes with the widths of arch.SIZES and depths chosen so each size has about the
# parameter count of the Selftok size of the same name (T: 2.22M vs 2.17M). The single-stream
# decoder needs more blocks than the two-stream MMDiT for the same count.
SPATIAL_SIZES: dict[str, dict[str, int]] = {
    "T": {"encoder_width": 96, "encoder_depth": 4, "decoder_width": 128, "decoder_depth": 5, "heads": 4},
    "S": {"encoder_width": 192, "encoder_depth": 6, "decoder_width": 256, "decoder_depth": 11, "heads": 4},
    "B": {"encoder_width": 768, "encoder_depth": 12, "decoder_width": 768, "decoder_depth": 23, "heads": 12},
}
SHARED_FROM_TOKENIZER = (
    "num_tokens", "codebook_size", "code_dim", "ema_decay", "dead_threshold", "prefix_dropout", "commitment_weight",
    "batch_size", "lr_decay", "warmup_steps",
)


def shared_recipe(tokenizer: TokenizerParams, renderer: RendererParams) -> dict[str, Any]:
    """The control's values that follow the Selftok arm: its tokenizer's recipe, the budget of
    tokenizer + renderer, and the renderer's edge weight (both arms' pixel losses alike)."""
    shared = {key: getattr(tokenizer, key) for key in SHARED_FROM_TOKENIZER}
    return shared | {"steps": tokenizer.steps + renderer.steps, "edge_weight": renderer.edge_weight}


@functools.cache
def _default_recipe() -> dict[str, Any]:
    return shared_recipe(TokenizerParams(), RendererParams())


class SpatialParams(SizeOverrides, LoopParams):
    """Architecture (size preset + overrides), its own learning rate, and overrides of the shared recipe."""

    size: Literal[tuple(SPATIAL_SIZES)] = Field("T", description="T | S | B: parameter-matched to the Selftok preset of the name")  # type: ignore[valid-type]
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="peak learning rate")
    num_tokens: Positive | None = Field(None, description="K (absent: tokenizer.num_tokens, which it must equal)")
    codebook_size: int | None = Field(None, ge=2, description="codes (absent: tokenizer.codebook_size, which it must equal)")
    code_dim: int | None = Field(None, ge=2, description="absent: tokenizer.code_dim")
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description="absent: tokenizer.ema_decay")
    dead_threshold: float | None = Field(None, ge=0.0, lt=1.0, description="absent: tokenizer.dead_threshold")
    prefix_dropout: Fraction | None = Field(None, description="share decoded from a random raster prefix (absent: tokenizer.prefix_dropout)")
    edge_weight: EdgeWeight | None = Field(None, description="pixel-loss edge weight (absent: renderer.edge_weight)")
    commitment_weight: float | None = Field(None, ge=0.0, description="absent: tokenizer.commitment_weight")
    steps: Positive | None = Field(None, description="absent: tokenizer.steps + renderer.steps (the same budget)")
    batch_size: Positive | None = Field(None, description="absent: tokenizer.batch_size")
    lr_decay: LRDecay | None = Field(None, description="absent: tokenizer.lr_decay")
    warmup_steps: int | None = Field(None, ge=0, description="absent: tokenizer.warmup_steps")

    @classmethod
    def inherited(cls, data: Any) -> Any:
        """Keys left out follow the default Selftok recipe (Params fills them from the actual sections first)."""
        if not isinstance(data, dict):
            return data
        return {**_default_recipe(), **{k: v for k, v in data.items() if v is not None}}

    def architecture(self, image_size: int) -> SpatialConfig:
        from selftok.tokenizer.spatial import SpatialConfig  # torch-heavy: not needed to validate params

        return SpatialConfig.from_size(
            self.size,
            image_size=image_size,
            num_tokens=self.num_tokens,
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            ema_decay=self.ema_decay,
            dead_threshold=self.dead_threshold,
            **self.overrides(),
        )


class ControlParams(StrictModel):
    """The spatial-token control arm: its tokenizer. Re-tokenisation, VLM, RL and evaluation run
    with the Selftok arm's own sections, so the two arms differ only in tokens."""

    spatial: SpatialParams = Field(SpatialParams(), description="2D VQ tokenizer in raster order (selftok.tokenizer.spatial)")
