"""Architecture config of a Selftok tokenizer and a DiT-style registry of named sizes.

The config is plain JSON (config.json next to the safetensors weights), so a saved model is
rebuilt exactly without pickles.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

ScheduleKind = Literal["custom", "uniform"]  # see selftok.tokenizer.schedule
Objective = Literal["velocity", "x0"]

# Widths/depths per named size; the CPU default is "T" (the size of the first CPU prototype).
SIZES: dict[str, dict[str, int]] = {
    "T": {"encoder_width": 96, "encoder_depth": 3, "decoder_width": 128, "decoder_depth": 3, "heads": 4},
    "S": {"encoder_width": 192, "encoder_depth": 6, "decoder_width": 256, "decoder_depth": 6, "heads": 4},
    "B": {"encoder_width": 768, "encoder_depth": 12, "decoder_width": 768, "decoder_depth": 12, "heads": 12},
    "L": {"encoder_width": 1024, "encoder_depth": 24, "decoder_width": 1024, "decoder_depth": 24, "heads": 16},
}


class JsonConfig:
    """to_dict/from_dict for the frozen dataclass configs saved as config.json (unknown keys fail)."""

    label = "tokenizer"  # names the config in errors

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown {cls.label} config keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class TokenizerConfig(JsonConfig):
    """Everything needed to rebuild the networks; training-only knobs live in params instead.

    The tokenizer always reads VAE latents (selftok.tokenizer.space), so ``vae_path`` is required."""

    image_size: int = 32
    vae_path: str | None = None  # local folder of a diffusers AutoencoderKL (never downloaded); required to build
    vae_shift: float | None = None  # latent normalisation (z - shift) * scale; None: the VAE config's
    vae_scale: float | None = None  #   shift_factor / scaling_factor (SD3's VAE: 0.0609 / 1.5305)
    num_tokens: int = 32
    codebook_size: int = 1024
    code_dim: int = 16
    encoder_patch: int = 4
    decoder_patch: int = 4
    encoder_width: int = 96
    encoder_depth: int = 3
    decoder_width: int = 128
    decoder_depth: int = 3
    heads: int = 4
    mlp_ratio: float = 4.0
    schedule: ScheduleKind = "custom"
    objective: Objective = "velocity"
    ema_decay: float = 0.99
    dead_threshold: float = 0.2  # reset codes whose EMA usage < this x uniform usage

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> TokenizerConfig:
        if size not in SIZES:
            raise KeyError(f"unknown tokenizer size {size!r}; known: {', '.join(SIZES)}")
        return cls(**{**SIZES[size], **overrides})

    def save(self, path: Path, **extra: Any) -> None:
        path.write_text(json.dumps({**self.to_dict(), **extra}, indent=2, sort_keys=True) + "\n")
