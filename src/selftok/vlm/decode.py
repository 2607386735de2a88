"""Codes -> images for the VLM's samples: the tokenizer's one-step renderer."""

from __future__ import annotations

from typing import Any

import torch

from selftok.data.dataset import to_unit
from selftok.tokenizer.metrics import batched
from selftok.vlm.scores import DecodeFn


def render_fn(tokenizer: Any, device: torch.device | str = "cpu") -> DecodeFn:
    """Decode function of a loaded tokenizer (Selftok with its renderer, or spatial): codes go to
    ``device``, images come back on the CPU."""
    tokenizer = tokenizer.to(device)

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return tokenizer.render(codes.to(device)).cpu()

    return decode


def reference_images(tokenizer: Any, decode: DecodeFn, renders: torch.Tensor) -> torch.Tensor:
    """uint8 real ``renders`` encoded by the tokenizer and decoded by ``decode`` (images in [-1, 1], as
    generations are): what generations can at best look like, the reference for their diversity,
    their distance to the data and the data ceiling."""
    return batched(decode, batched(lambda x: tokenizer.encode(to_unit(x)), renders, 256), 256)
