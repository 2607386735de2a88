"""Small projects of real shards for data tests, written the way ingest writes them."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from selftok.data.manifest import manifest_row  # the rows exactly as ingest writes them
from selftok.data.scenes import SceneConfig, SceneGenerator, render
from selftok.data.shards import SHARD_PATTERN, write_shards

SIZE = 16
Sample = dict[str, Any]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scene_sample(split: str, index: int) -> Sample:
    """A good sample exactly as the built-in scene source makes it."""
    scene = SceneGenerator(SceneConfig(image_size=SIZE), seed=0).scene(split, index)  # type: ignore[arg-type]
    return {
        "__key__": f"{split}-{index:07d}",
        "png": png(render(scene)),
        "txt": scene.caption.encode(),
        "json": json.dumps(scene.metadata(), sort_keys=True).encode(),
    }


def write_project(root: Path, splits: dict[str, list[Sample]], shard_size: int = 4) -> pd.DataFrame:
    """Shards under root/data/shards/{split}/ and the manifest, as ingest writes them."""
    rows = []
    for split, samples in splits.items():
        write_shards(samples, root / "data" / "shards" / split, shard_size)
        for index, sample in enumerate(samples):
            rows.append(manifest_row(sample, split, f"data/shards/{split}/{SHARD_PATTERN % (index // shard_size)}"))
    manifest = pd.DataFrame(rows).sort_values("key", kind="stable").reset_index(drop=True)
    manifest.to_parquet(root / "data" / "shards" / "manifest.parquet", index=False)
    return manifest
