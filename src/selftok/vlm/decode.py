"""Codes -> images for the VLM's samples: the tokenizer's one-step renderer (METHOD.md section 4)."""

from __future__ import annotations

from pathlib import Path

import torch

from selftok.vlm.scores import DecodeFn

TOKENIZER_DIR, RENDERER_DIR = Path("models/tokenizer"), Path("models/renderer")


def load_renderer(
    root: Path, device: torch.device | str = "cpu", tokenizer_dir: Path = TOKENIZER_DIR, renderer_dir: Path | None = RENDERER_DIR
) -> DecodeFn | None:
    """The renderer's decode function, or None while its model folders are missing.

    ``renderer_dir`` None is a tokenizer that renders with its own decoder (the spatial arm).
    """
    folders = [tokenizer_dir] if renderer_dir is None else [tokenizer_dir, renderer_dir]
    if not all((root / d / "config.json").is_file() for d in folders):
        return None
    from selftok.tokenizer.registry import load_tokenizer

    tokenizer = load_tokenizer(root / tokenizer_dir, renderer=None if renderer_dir is None else root / renderer_dir).to(device)

    def decode(codes: torch.Tensor) -> torch.Tensor:
        return tokenizer.render(codes.to(device)).cpu()

    return decode
