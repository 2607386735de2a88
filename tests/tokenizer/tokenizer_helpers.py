"""Tiny tokenizer configs and data shared by the tokenizer tests."""

from __future__ import annotations

import torch

from selftok.tokenizer.params import RendererParams, TokenizerParams

TINY = {
    "image_size": 8,
    "num_tokens": 4,
    "codebook_size": 16,
    "code_dim": 4,
    "encoder_patch": 2,
    "decoder_patch": 2,
    "encoder_width": 16,
    "encoder_depth": 1,
    "decoder_width": 16,
    "decoder_depth": 2,
    "heads": 2,
    "mlp_ratio": 2.0,
}


def tiny_params(**overrides: object) -> TokenizerParams:
    arch = {k: v for k, v in TINY.items() if k not in ("image_size", "mlp_ratio")}
    return TokenizerParams(
        **{
            **arch,
            "batch_size": 16,
            "steps": 4,
            "warmup_steps": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "eval_every": 1000,
            **overrides,
        }
    )


def tiny_renderer_params(**overrides: object) -> RendererParams:
    return RendererParams(
        **{"batch_size": 16, "steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "eval_every": 1000, **overrides}
    )


def color_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, size, size]: a random background colour with a random-coloured square in one of 4 places."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.randint(0, 4, (n, 3, 1, 1), generator=g) * 80).expand(n, 3, size, size).clone()
    half = size // 2
    for i in range(n):
        corner = int(torch.randint(0, 4, (1,), generator=g))
        y, x = (corner // 2) * half, (corner % 2) * half
        images[i, :, y : y + half, x : x + half] = torch.randint(0, 4, (3, 1, 1), generator=g) * 80
    return images.to(torch.uint8)
