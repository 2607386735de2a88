"""Helpers for the eval tests: scene sets rendered in memory, and an oracle evaluator that reads exact metadata, so the
benchmark's rules and sanity checks are tested without waiting for a trained model."""

from __future__ import annotations

import numpy as np
import torch

from selftok.data.dataset import ImageSet
from selftok.data.scenes import SceneConfig, SceneGenerator, render
from selftok.eval.evaluator import EvaluatorConfig, ParsedObject

torch.set_num_threads(1)

HOLDOUT = ("red star", "blue triangle", "green diamond")


def scene_set(split: str, n: int, image_size: int = 32, seed: int = 0) -> ImageSet:
    generator = SceneGenerator(SceneConfig(image_size=image_size, holdout=HOLDOUT), seed)
    scenes = [generator.scene(split, i) for i in range(n)]  # type: ignore[arg-type]
    images = np.stack([np.asarray(render(s)) for s in scenes])
    return ImageSet(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        captions=[s.caption for s in scenes],
        metadata=[s.metadata() for s in scenes],
        keys=[f"{split}-{i:07d}" for i in range(n)],
    )


class OracleEvaluator:
    """Parses exactly the images it was shown with their true objects; anything else is empty."""

    def __init__(self, image_size: int = 32) -> None:
        self.config = EvaluatorConfig(image_size=image_size)
        self.truth: dict[bytes, list[ParsedObject]] = {}

    def learn(self, images: torch.Tensor, truths: list[list[ParsedObject]]) -> None:
        for image, objects in zip(images, truths, strict=True):
            self.truth[image.numpy().tobytes()] = objects

    def parse(self, images: torch.Tensor) -> list[list[ParsedObject]]:
        return [self.truth.get(image.numpy().tobytes(), []) for image in images]
