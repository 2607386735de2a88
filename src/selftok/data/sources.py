"""Ingestion sources: the built-in scene generator, a folder of images, or existing shards.

Each source yields raw samples ``{'__key__', 'png', 'txt', 'json', ...}`` per split, in a
deterministic order. Decodable images from the folder and shard sources go through the resize
policy; bytes that do not decode are passed through unchanged, so that `validate` can name and
quarantine them rather than ingest silently dropping data.

Resize policy ``center_crop`` (docs/design.md): convert to the configured mode
(RGB; alpha is dropped, grayscale and palette images are expanded), scale the shorter side to
``image_size`` with a Lanczos filter, then crop the centre square. ``none`` re-encodes the
image losslessly as PNG and leaves size and mode as they are.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from selftok.data.params import DataParams
from selftok.data.scenes import SceneConfig, SceneGenerator, render
from selftok.data.shards import read_samples

Sample = dict[str, Any]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SPLITS = ("train", "val", "images")  # images: image-only, read by the image models alone


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def apply_policy(data: bytes, params: DataParams) -> tuple[bytes, dict[str, Any]]:
    """Resize/crop a decodable image per policy; undecodable bytes come back unchanged."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            original = {"original_size": list(image.size), "original_mode": image.mode}
            if params.resize == "none":
                return png_bytes(image), original
            image = image.convert(params.mode)
            size = params.image_size
            scale = size / min(image.size)
            resized = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))),
                                   Image.Resampling.LANCZOS)
            left, top = (resized.width - size) // 2, (resized.height - size) // 2
            return png_bytes(resized.crop((left, top, left + size, top + size))), original
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        return data, {"decode_error": str(error)[:200]}


def scene_samples(params: DataParams, split: str, exclude: frozenset[str] = frozenset()) -> Iterator[Sample]:
    """Rendered scenes; captions in ``exclude`` (the benchmark's held-out prompts) are never drawn."""
    cfg = params.scenes
    generator = SceneGenerator(
        SceneConfig(
            image_size=params.image_size,
            min_objects=cfg.min_objects,
            max_objects=cfg.max_objects,
            object_size=cfg.object_size,
            categories=tuple(cfg.categories),
            holdout=tuple(cfg.holdout),
        ),
        seed=cfg.seed,
    )
    for index in range(getattr(cfg, f"n_{split}")):
        scene = generator.scene(split, index, exclude)  # type: ignore[arg-type]
        yield {
            "__key__": f"{split}-{index:07d}",
            "png": png_bytes(render(scene)),
            "txt": scene.caption,
            "json": json.dumps(scene.metadata(), sort_keys=True),
        }


def _folder_captions(folder: Path) -> dict[str, str]:
    """Captions from captions.jsonl ({"file", "caption"}) or captions.csv (file,caption)."""
    captions: dict[str, str] = {}
    jsonl, table = folder / "captions.jsonl", folder / "captions.csv"
    if jsonl.is_file():
        for number, line in enumerate(jsonl.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    record = json.loads(line)
                    captions[record["file"]] = str(record["caption"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(f"{jsonl}:{number}: expected {{'file': ..., 'caption': ...}}: {error}") from None
    if table.is_file():
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{table}: needs a header with columns 'file' and 'caption'")
            for row in reader:
                captions[row["file"]] = row["caption"] or ""
    return captions


def _split_of(relative: str, val_fraction: float) -> str:
    """Stable split from the file's path, so adding files never moves existing ones."""
    bucket = int(hashlib.sha256(relative.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if bucket < val_fraction else "train"


def folder_files(params: DataParams, split: str) -> list[str]:
    """The split's image files, relative to the folder, in the order of its samples."""
    folder = params.folder.path
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"data.folder.path: {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"data.folder.path: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    relatives = (path.relative_to(folder).as_posix() for path in files)
    return [relative for relative in relatives if _split_of(relative, params.folder.val_fraction) == split]


def folder_captions(params: DataParams) -> dict[str, str]:
    """Captions of the folder's files from its captions.jsonl or captions.csv (sidecars aside)."""
    folder = params.folder.path
    if folder is None or not folder.is_dir():
        raise FileNotFoundError(f"data.folder.path: {folder} is not a folder")
    return _folder_captions(folder)


def folder_sample(params: DataParams, relative: str, captions: dict[str, str]) -> Sample:
    """One file of the folder as a sample: its sidecar .txt caption, else the one in ``captions``."""
    path = params.folder.path / relative  # type: ignore[operator]
    sidecar = path.with_suffix(".txt")
    caption = sidecar.read_text().strip() if sidecar.is_file() else captions.get(relative, "")
    image, facts = apply_policy(path.read_bytes(), params)
    return {
        "__key__": "img-" + hashlib.sha256(relative.encode()).hexdigest()[:16],
        "png": image,
        "txt": caption,
        "json": json.dumps({"source": "folder", "file": relative, **facts}, sort_keys=True),
    }


def folder_samples(params: DataParams, split: str) -> Iterator[Sample]:
    captions = folder_captions(params)
    for relative in folder_files(params, split):
        yield folder_sample(params, relative, captions)


def shard_samples(params: DataParams, split: str) -> Iterator[Sample]:
    """Samples of existing shards, re-keyed per split; unknown members are carried along as-is."""
    for url in getattr(params.shards, split):
        for sample in read_samples(url):
            out: Sample = {k: v for k, v in sample.items() if not k.startswith("__")}
            image = next((out.pop(k) for k in ("png", "jpg", "jpeg", "webp") if k in out), None)
            if image is not None:
                out["png"], _ = apply_policy(image, params)
            out.setdefault("txt", out.pop("caption", b""))
            out.setdefault("json", b"{}")
            out["__key__"] = str(sample["__key__"]).replace(".", "_")
            yield out


def samples(params: DataParams, split: str, exclude: frozenset[str] = frozenset()) -> Iterator[Sample]:
    if params.source == "scenes":
        return scene_samples(params, split, exclude)
    if params.source == "folder":
        return folder_samples(params, split)
    return shard_samples(params, split)
