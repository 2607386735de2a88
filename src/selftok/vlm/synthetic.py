"""Synthetic codes that depend on the scene, for developing and testing the VLM without a tokenizer.

A scene's metadata is written as K codes, coarse-to-fine like Selftok tokens: background,
object count, then per object (left to right) shape, colour, column and row bins; the rest is
a fixed filler. A model that learns text->image on these codes must bind colours, counts and
positions to the caption; :func:`render_codes` turns codes back into a scene image, so the
whole sampling -> decode -> scoring path runs before real codes exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from selftok.data.codes import CODES_MANIFEST, code_sample
from selftok.data.scenes import BACKGROUNDS, COLORS, SHAPES, Scene, SceneConfig, SceneGenerator, SceneObject, render
from selftok.data.shards import write_shards

BINS = 4
_BG = 0
_COUNT = _BG + len(BACKGROUNDS)
_SHAPE = _COUNT + 4
_COLOR = _SHAPE + len(SHAPES)
_X = _COLOR + len(COLORS)
_Y = _X + BINS
FILLER = _Y + BINS
MIN_CODES = FILLER + 1
MIN_TOKENS = 2 + 4 * 4  # background, count, four objects of four tokens


def codes_from_metadata(metadata: dict[str, Any], num_tokens: int = MIN_TOKENS, num_codes: int = MIN_CODES) -> list[int]:
    if num_tokens < MIN_TOKENS or num_codes < MIN_CODES:
        raise ValueError(f"synthetic codes need K >= {MIN_TOKENS} and C >= {MIN_CODES}")
    size = metadata["image_size"]
    objects = sorted(metadata["objects"], key=lambda o: (o["box"][0] + o["box"][2], o["box"][1] + o["box"][3]))
    codes = [_BG + sorted(BACKGROUNDS).index(metadata["background"]), _COUNT + len(objects) - 1]
    for o in objects:
        cx, cy = (o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2
        codes += [
            _SHAPE + SHAPES.index(o["shape"]),
            _COLOR + list(COLORS).index(o["color"]),
            _X + min(int(cx / size * BINS), BINS - 1),
            _Y + min(int(cy / size * BINS), BINS - 1),
        ]
    return codes + [FILLER + i % (num_codes - FILLER) for i in range(len(codes), num_tokens)]


def synthetic_codes(metadata: list[dict[str, Any]], num_tokens: int = MIN_TOKENS, num_codes: int = MIN_CODES) -> torch.Tensor:
    return torch.tensor([codes_from_metadata(m, num_tokens, num_codes) for m in metadata], dtype=torch.long)


def scene_from_codes(codes: list[int], image_size: int) -> Scene | None:
    """The scene the codes describe, or None when they break the layout (a garbage sample)."""
    if not _BG <= codes[0] < _COUNT or not _COUNT <= codes[1] < _SHAPE:
        return None
    count = codes[1] - _COUNT + 1
    side = max(4, round(image_size * 0.3))
    cell = image_size / BINS
    objects = []
    for i in range(count):
        shape, color, x, y = codes[2 + 4 * i : 6 + 4 * i]
        ok = (_SHAPE <= shape < _COLOR, _COLOR <= color < _X, _X <= x < _Y, _Y <= y < FILLER)
        if not all(ok):
            return None
        cx, cy = (x - _X + 0.5) * cell, (y - _Y + 0.5) * cell
        x0 = int(min(max(cx - side / 2, 0), image_size - side))
        y0 = int(min(max(cy - side / 2, 0), image_size - side))
        objects.append(SceneObject(SHAPES[shape - _SHAPE], list(COLORS)[color - _COLOR], (x0, y0, x0 + side, y0 + side)))
    background = sorted(BACKGROUNDS)[codes[0] - _BG]
    return Scene(prompt={"tag": "synthetic", "prompt": ""}, background=background, objects=objects, image_size=image_size)


def render_codes(codes: torch.Tensor, image_size: int) -> torch.Tensor:
    """Codes [B, K] -> images in [-1, 1] [B, 3, S, S]; invalid codes give a black image."""
    images = []
    for row in codes.tolist():
        scene = scene_from_codes(row, image_size)
        array = torch.zeros(3, image_size, image_size, dtype=torch.uint8)
        if scene is not None:
            array = torch.frombuffer(bytearray(render(scene).tobytes()), dtype=torch.uint8).view(image_size, image_size, 3).permute(2, 0, 1)
        images.append(array)
    return torch.stack(images).float().div(127.5).sub(1.0)


def write_synthetic_codes(
    root: Path, folder: Path, n_train: int, n_val: int, num_tokens: int = MIN_TOKENS, num_codes: int = MIN_CODES, seed: int = 0,
    image_size: int = 32, shard_size: int = 1000,
) -> None:
    """Code shards, manifest and info.json in the code folder ``root / folder``, in the tokenize stage's
    format, from scene metadata."""
    generator = SceneGenerator(SceneConfig(image_size=image_size), seed)
    rows = []
    for split, n in (("train", n_train), ("val", n_val)):
        scenes = [generator.scene(split, i) for i in range(n)]  # type: ignore[arg-type]
        samples = [
            code_sample(f"{split}-{i:06d}", np.asarray(codes_from_metadata(s.metadata(), num_tokens, num_codes)), s.caption, json.dumps(s.metadata()))
            for i, s in enumerate(scenes)
        ]
        for path in write_shards(samples, root / folder / split, shard_size):
            keys = [s["__key__"] for s in samples[int(path.stem.split("-")[1]) * shard_size :][:shard_size]]
            rows += [{"key": k, "split": split, "shard": str(path.relative_to(root))} for k in keys]
    pd.DataFrame(rows).sort_values("key", kind="stable").to_parquet(root / folder / CODES_MANIFEST, index=False)
    (root / folder / "info.json").write_text(json.dumps({"num_tokens": num_tokens, "codebook_size": num_codes, "tokenizer": "synthetic"}) + "\n")
