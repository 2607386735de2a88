"""Codes -> images for the VLM's samples: the tokenizer's one-step renderer (METHOD.md section 4)."""

from __future__ import annotations

from typing import Any

import torch

from selftok.vlm.scores import DecodeFn


def render_fn(tokenizer: Any, device: torch.device | str = "cpu") -> DecodeFn:
    """Decode function of a loaded tokenizer (Selftok with its renderer, or spatial): codes go to
    ``device``, images come back on the CPU."""
    tokenizer = tokenizer.to(device)

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return tokenizer.render(codes.to(device)).cpu()

    return decode
