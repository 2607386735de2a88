"""Synthetic scene codes for the VLM tests: their content follows the caption."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from selftok.data.scenes import SceneConfig, SceneGenerator
from selftok.vlm.synthetic import MIN_CODES, MIN_TOKENS, synthetic_codes

K, C = MIN_TOKENS, MIN_CODES + 4


@dataclass
class Data:
    captions: list[str]
    metadata: list[dict[str, Any]]
    codes: torch.Tensor


def make_data(n: int, split: str = "train") -> Data:
    generator = SceneGenerator(SceneConfig(image_size=16), seed=0)
    scenes = [generator.scene(split, i) for i in range(n)]  # type: ignore[arg-type]
    metadata = [s.metadata() for s in scenes]
    return Data([s.caption for s in scenes], metadata, synthetic_codes(metadata, K, C))
