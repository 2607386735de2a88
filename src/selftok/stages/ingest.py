"""Stage `ingest`: source -> data/shards/{train,val,images}/shard-%06d.tar + the shard manifest.

``images`` is the image-only split (``data.scenes.n_images`` or ``data.shards.images``): images the
VAE and tokenizers train on besides train, allowed to hold the held-out colour-shape pairs because
no caption or code of theirs ever reaches the VLM. A folder source has none.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from selftok import paths
from selftok.data import sources
from selftok.data.manifest import SHARD_MANIFEST, manifest_row
from selftok.data.shards import SHARD_PATTERN, write_shards
from selftok.eval.geneval import prompt_sets
from selftok.progress import Progress
from selftok.stages.base import Metrics, StageContext
from selftok.viz import image_grid

log = logging.getLogger(__name__)
PREVIEW = 64


def run(ctx: StageContext) -> Metrics:
    data = ctx.params.data
    rows: list[dict[str, Any]] = []
    preview: list[np.ndarray] = []
    started = time.perf_counter()

    def record(items: Iterable[dict[str, Any]], split: str) -> Iterator[dict[str, Any]]:
        for index, sample in enumerate(items):
            shard = f"{paths.SHARDS}/{split}/{SHARD_PATTERN % (index // data.shard_size)}"
            row = manifest_row(sample, split, shard)
            rows.append(row)
            if split == "train" and len(preview) < PREVIEW and row["mode"] == "RGB" and row["width"] == data.image_size:
                preview.append(np.asarray(Image.open(io.BytesIO(sample["png"]))).transpose(2, 0, 1))
            progress.update()
            yield sample

    # Held-out benchmark prompts never caption a training image (they are for evaluation only).
    heldout = frozenset(r["prompt"] for r in prompt_sets(data, ctx.params.seed, ctx.params.geneval)["heldout"])
    for split in sources.SPLITS:
        total = getattr(data.scenes, f"n_{split}") if data.source == "scenes" else None
        with Progress(total, f"ingest {split} ({data.source})") as progress:
            write_shards(record(sources.samples(data, split, heldout if split == "train" else frozenset()), split), ctx.path(paths.SHARDS) / split,
                         data.shard_size)

    manifest = pd.DataFrame(rows).sort_values("key", kind="stable").reset_index(drop=True)
    manifest.to_parquet(ctx.path(SHARD_MANIFEST), index=False)
    seconds = time.perf_counter() - started
    log.info("ingested %d samples in %.1fs (%.0f images/s)", len(manifest), seconds, len(manifest) / seconds)
    ctx.log_metrics({"ingest_images_per_s": len(manifest) / seconds})
    if preview:
        ctx.log_image(image_grid(np.stack(preview), columns=8, scale=2), "preview/train.png")

    counts = manifest["split"].value_counts().to_dict()
    categories: dict[str, int] = {}
    for text in manifest["metadata"]:
        try:
            category = json.loads(text).get("category")
        except (json.JSONDecodeError, AttributeError):
            category = None
        if category:
            categories[category] = categories.get(category, 0) + 1
    return {
        "n_train": int(counts.get("train", 0)),
        "n_val": int(counts.get("val", 0)),
        "n_images": int(counts.get("images", 0)),
        "n_shards": int(manifest["shard"].nunique()),
        "categories": dict(sorted(categories.items())),
    }
