"""Stage `ingest`: source -> data/shards/{train,val,images}/shard-%06d.tar + the shard manifest.

``images`` is the image-only split (``data.scenes.n_images`` or ``data.shards.images``): images the
VAE and tokenizers train on besides train, allowed to hold the held-out colour-shape pairs because
no caption or code of theirs ever reaches the VLM. A folder source has none.

A folder source follows ``tokenize.workers`` and ``tokenize.dask_address``: with more than one
worker or a cluster address, each shard (one slice of the sorted file list) is decoded, resized and
written as a Prefect task on Dask (selftok.data.shard_map), into a scratch folder moved in once
every shard is done. The shards and manifest are byte-identical to a run in this process. Scenes
are generated and shard sources are read shard by shard, so both stay in this process.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from selftok import paths
from selftok.data import sources
from selftok.data.manifest import SHARD_MANIFEST, manifest_row
from selftok.data.params import DataParams
from selftok.data.shard_map import map_shards
from selftok.data.shards import SHARD_PATTERN, read_samples, write_shards
from selftok.eval.geneval import prompt_sets
from selftok.progress import Progress
from selftok.stages.base import Metrics, StageContext
from selftok.viz import image_grid

log = logging.getLogger(__name__)
PREVIEW = 64
Rows = list[dict[str, Any]]


def _shard(split: str, index: int) -> str:
    return f"{paths.SHARDS}/{split}/{SHARD_PATTERN % index}"


def preview_images(root: Path, rows: Rows, image_size: int) -> list[np.ndarray]:
    """The first PREVIEW train images of the configured size and mode, read back from their shards."""
    wanted = [r for r in rows if r["split"] == "train" and r["mode"] == "RGB" and r["width"] == image_size][:PREVIEW]
    pngs: dict[str, bytes] = {}
    for shard in dict.fromkeys(r["shard"] for r in wanted):
        keys = {r["key"] for r in wanted if r["shard"] == shard}
        pngs |= {str(s["__key__"]): bytes(s["png"]) for s in read_samples(root / shard) if s["__key__"] in keys}
    return [np.asarray(Image.open(io.BytesIO(pngs[r["key"]]))).transpose(2, 0, 1) for r in wanted]


def write_split(data: DataParams, split: str, folder: Path, exclude: frozenset[str]) -> Rows:
    """Write one split's shards in this process; returns its manifest rows."""
    rows: Rows = []

    def record(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for index, sample in enumerate(items):
            rows.append(manifest_row(sample, split, _shard(split, index // data.shard_size)))
            progress.update()
            yield sample

    total = getattr(data.scenes, f"n_{split}") if data.source == "scenes" else None
    with Progress(total, f"ingest {split} ({data.source})") as progress:
        write_shards(record(sources.samples(data, split, exclude)), folder, data.shard_size)
    return rows


Slice = tuple[str, int, tuple[str, ...], dict[str, str]]  # split, shard number, its files, their listed captions


def _scratch(shards: Path, split: str) -> Path:
    return shards / f".{split}.map"


def _write_slice(job: Slice, data: DataParams, shards: Path) -> Rows:
    """One shard of a folder source (a Dask task): its files read, converted and written to the split's scratch folder."""
    split, index, files, captions = job
    samples = [sources.folder_sample(data, relative, captions) for relative in files]
    staging = _scratch(shards, split) / f".{index}"
    written = write_shards(samples, staging, shard_size=len(samples))
    os.replace(written[0], _scratch(shards, split) / (SHARD_PATTERN % index))
    staging.rmdir()
    return [manifest_row(sample, split, _shard(split, index)) for sample in samples]


def _slices(data: DataParams, split: str) -> list[Slice]:
    """The split's sorted files cut into shards, each with the captions its files need."""
    files, captions = sources.folder_files(data, split), sources.folder_captions(data)
    parts = [tuple(files[i : i + data.shard_size]) for i in range(0, len(files), data.shard_size)]
    return [(split, n, part, {f: captions[f] for f in part if f in captions}) for n, part in enumerate(parts)]


def map_folder(data: DataParams, shards: Path, workers: int, address: str | None = None) -> Rows:
    """Every split of a folder source as one Dask task per shard; the same shard bytes and manifest
    rows as ``write_split``. Each split's shards replace its old ones once all of them are written."""
    jobs = {split: _slices(data, split) for split in sources.SPLITS}
    mapped = [split for split in sources.SPLITS if jobs[split]]
    for split in mapped:
        shutil.rmtree(_scratch(shards, split), ignore_errors=True)
        _scratch(shards, split).mkdir(parents=True)
    todo = [job for split in mapped for job in jobs[split]]
    try:
        with Progress(sum(len(job[2]) for job in todo), f"ingest (folder, {len(todo)} shards on dask)") as progress:
            done = map_shards(partial(_write_slice, data=data, shards=shards), todo, workers, address,
                              on_done=lambda job: progress.update(len(job[2])), name="ingest") if todo else []
        for split in mapped:
            (shards / split).mkdir(exist_ok=True)
            for old in (shards / split).glob("shard-*.tar"):
                old.unlink()
            for new in sorted(_scratch(shards, split).glob("shard-*.tar")):
                new.replace(shards / split / new.name)
    finally:
        for split in mapped:
            shutil.rmtree(_scratch(shards, split), ignore_errors=True)
    rows: dict[str, Rows] = {split: [] for split in mapped}
    for job, shard_rows in zip(todo, done, strict=True):
        rows[job[0]] += shard_rows
    # a split without files gets what write_split gives it: one empty shard
    return [row for split in sources.SPLITS for row in rows.get(split) or write_split(data, split, shards / split, frozenset())]


def _ingest(ctx: StageContext, heldout: frozenset[str]) -> Rows:
    """Every split's shards and manifest rows: mapped on Dask for a folder source with workers, else here."""
    data, tokenize = ctx.params.data, ctx.params.tokenize
    if data.source == "folder" and (tokenize.workers > 1 or tokenize.dask_address):
        return map_folder(data, ctx.path(paths.SHARDS), tokenize.workers, tokenize.dask_address)
    # Held-out benchmark prompts never caption a training image (they are for evaluation only).
    return [row for split in sources.SPLITS
            for row in write_split(data, split, ctx.path(paths.SHARDS) / split, heldout if split == "train" else frozenset())]


def run(ctx: StageContext) -> Metrics:
    data = ctx.params.data
    started = time.perf_counter()
    rows = _ingest(ctx, frozenset(r["prompt"] for r in prompt_sets(data, ctx.params.seed, ctx.params.geneval)["compositional"]))

    manifest = pd.DataFrame(rows).sort_values("key", kind="stable").reset_index(drop=True)
    manifest.to_parquet(ctx.path(SHARD_MANIFEST), index=False)
    seconds = time.perf_counter() - started
    log.info("ingested %d samples in %.1fs (%.0f images/s)", len(manifest), seconds, len(manifest) / seconds)
    ctx.log_metrics({"ingest_images_per_s": len(manifest) / seconds})
    if preview := preview_images(ctx.root, rows, data.image_size):
        ctx.log_image(image_grid(np.stack(preview), columns=8, scale=2), "preview/train.png")
    return _summary(manifest)


def _summary(manifest: pd.DataFrame) -> Metrics:
    """The stage's metrics: samples per split, shards and captions per category."""
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
