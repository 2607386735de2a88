"""Accepted samples for training and evaluation: what every stage after `validate` reads.

Only samples in the accepted manifest written by `validate` are returned, in manifest order
(sorted by key), so every stage sees the same data in the same order.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from selftok.data.shards import read_samples
from selftok.paths import ACCEPTED

ACCEPTED_MANIFEST = Path(ACCEPTED) / "manifest.parquet"
# What the image models (VAE, tokenizers, renderer) train on: train and the image-only split,
# which may hold the held-out colour-shape pairs because the VLM never reads it.
IMAGE_TRAINING = ("train", "images")
CAPTIONED = ("train", "val")  # what the VLM reads (as codes and captions)


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, H, W]
    captions: list[str]
    metadata: list[dict[str, Any]]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def accepted_manifest(root: Path) -> pd.DataFrame:
    path = root / ACCEPTED_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: accepted manifest not found; run `dvc repro validate` first")
    return pd.read_parquet(path)


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def load_split(root: Path, split: str | tuple[str, ...], limit: int | None = None) -> ImageSet:
    """All accepted samples of a split (or of several, e.g. ``IMAGE_TRAINING``), decoded into
    memory (fine up to ~1e5 small images), in manifest (key) order."""
    manifest = accepted_manifest(root)
    rows = manifest[manifest["split"].isin([split] if isinstance(split, str) else split)]
    if limit is not None:
        rows = rows.iloc[:limit]
    if rows.empty:
        raise ValueError(f"no accepted samples in split {split!r} of {root / ACCEPTED_MANIFEST}")
    wanted = set(rows["key"])
    found: dict[str, dict[str, Any]] = {}
    for shard in sorted(rows["shard"].unique()):
        for sample in read_samples(root / shard):
            if sample["__key__"] in wanted:
                found[sample["__key__"]] = sample
    missing = wanted - found.keys()
    if missing:
        raise FileNotFoundError(f"{len(missing)} accepted samples missing from their shards, e.g. {sorted(missing)[:3]}")
    keys = list(rows["key"])
    images = np.stack([decode_png(found[k]["png"]) for k in keys])
    return ImageSet(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        captions=[found[k]["txt"].decode() for k in keys],
        metadata=[json.loads(found[k]["json"]) for k in keys],
        keys=keys,
    )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the model space of every image model here."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8, clamped and rounded: the 8-bit protocol of every image metric."""
    return images.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)
