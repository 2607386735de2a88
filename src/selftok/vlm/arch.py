"""Size presets of the Llama backbone: tiny for smoke runs, small for the CPU default, large ~ the paper.

The paper uses Llama3-8B; "large" is that shape (built from a config, never downloaded), the
others keep the same family (RMSNorm, SwiGLU, RoPE, grouped-query attention) at toy width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers loads torch: keep params parsing (selftok.config) light
    from transformers import LlamaConfig


@dataclass(frozen=True)
class Size:
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    rope_theta: float = 10_000.0
    max_positions: int = 2048


SIZES: dict[str, Size] = {
    "tiny": Size(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=176),
    "small": Size(hidden_size=192, layers=4, heads=6, kv_heads=2, intermediate_size=512),
    "base": Size(hidden_size=768, layers=12, heads=12, kv_heads=4, intermediate_size=2048),
    "large": Size(hidden_size=4096, layers=32, heads=32, kv_heads=8, intermediate_size=14336, rope_theta=500_000.0, max_positions=8192),
}


def llama_config(
    size: str,
    vocab_size: int,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    hidden_size: int | None = None,
    layers: int | None = None,
    heads: int | None = None,
) -> LlamaConfig:
    """A LlamaConfig for a preset; overrides keep the preset's head-to-kv-head ratio."""
    from transformers import LlamaConfig

    preset = SIZES[size]
    hidden = hidden_size or preset.hidden_size
    n_heads = heads or preset.heads
    if hidden % n_heads:
        raise ValueError(f"vlm hidden_size {hidden} is not divisible by heads {n_heads}")
    ratio = max(1, preset.heads // preset.kv_heads)
    kv_heads = n_heads // ratio if n_heads % ratio == 0 else n_heads
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=preset.intermediate_size if hidden_size is None else int(8 * hidden / 3 / 16 + 0.999) * 16,
        num_hidden_layers=layers or preset.layers,
        num_attention_heads=n_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=preset.max_positions,
        rope_theta=preset.rope_theta,
        tie_word_embeddings=False,  # one embedding table and one output head, as in Llama3-8B
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attention_dropout=0.0,
    )
