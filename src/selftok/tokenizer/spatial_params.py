"""params.yaml section `control.spatial`: the spatial control tokenizer (kept free of torch, so
loading params stays fast; the model itself is selftok.tokenizer.spatial)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from selftok.tokenizer.params import EdgeWeight, Fraction, LoopParams, Positive, SizeOverrides

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


class SpatialParams(SizeOverrides, LoopParams):
    """Architecture (size preset + overrides) and the recipe; defaults follow TokenizerParams."""

    size: Literal[tuple(SPATIAL_SIZES)] = "T"  # type: ignore[valid-type]
    num_tokens: Positive = 32
    codebook_size: int = Field(1024, ge=2)
    code_dim: int = Field(16, ge=2)
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    dead_threshold: float = Field(0.2, ge=0.0, lt=1.0)
    prefix_dropout: Fraction = 0.2  # share of samples decoded from a random raster prefix
    edge_weight: EdgeWeight = 0.0
    commitment_weight: float = Field(1.0, ge=0.0)

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
