"""Codes -> images for the VLM's samples: the tokenizer's one-step renderer (METHOD.md section 4)."""

from __future__ import annotations

from pathlib import Path

import torch

from selftok.vlm.scores import DecodeFn

TOKENIZER_DIR, RENDERER_DIR = Path("models/tokenizer"), Path("models/renderer")


def load_renderer(root: Path, device: torch.device | str = "cpu") -> DecodeFn | None:
    """The renderer's decode function, or None while models/tokenizer or models/renderer is missing."""
    if not all((root / d / "config.json").is_file() for d in (TOKENIZER_DIR, RENDERER_DIR)):
        return None
    from selftok.tokenizer.model import SelftokTokenizer

    tokenizer = SelftokTokenizer.from_pretrained(root / TOKENIZER_DIR, renderer=root / RENDERER_DIR).to(device)

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return tokenizer.render(codes.to(device)).cpu()

    return decode
