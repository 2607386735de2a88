"""Selftok code shards: what every AR model trains on.

A code folder (an arm's ``codes`` in selftok.paths) holds ``{train,val}/shard-%06d.tar``, the
manifest and ``info.json`` (K, codebook size, tokenizer digest); each sample holds ``codes.npy`` (int16/int32 array
of K code ids, coarse-to-fine: index 0 is token v1), ``txt`` (caption), ``json`` (metadata)
and ``__key__`` (the source sample's key). ``codes.npy`` is read with
``allow_pickle=False``, so a hostile shard cannot run code.
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

from selftok.data.shards import read_samples

CODES_MANIFEST = "manifest.parquet"  # in a code folder: one row per sample (key, split, shard)


@dataclass
class CodeSet:
    codes: torch.Tensor  # int64 [N, K], coarse-to-fine
    captions: list[str]
    metadata: list[dict[str, Any]]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)


def codes_to_bytes(codes: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, codes.astype(np.int32 if codes.max(initial=0) >= 2**15 else np.int16), allow_pickle=False)
    return buffer.getvalue()


def codes_from_bytes(data: bytes, where: str) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{where}: codes.npy is not a plain integer array: {error}") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{where}: codes.npy must be a 1-D integer array, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


def code_sample(key: str, codes: np.ndarray, caption: str, metadata: str) -> dict[str, Any]:
    return {"__key__": key, "codes.npy": codes_to_bytes(codes), "txt": caption, "json": metadata}


def load_codes(root: Path, split: str, limit: int | None = None, *, folder: Path) -> CodeSet:
    """All code samples of a split, in manifest (key) order; ``folder`` is the arm's codes folder."""
    path = root / folder / CODES_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: code manifest not found; run `dvc repro tokenize` first")
    manifest = pd.read_parquet(path)
    rows = manifest[manifest["split"] == split]
    if limit is not None:
        rows = rows.iloc[:limit]
    if rows.empty:
        raise ValueError(f"no code samples for split {split!r} in {path}")
    found: dict[str, dict[str, Any]] = {}
    for shard in sorted(rows["shard"].unique()):
        for sample in read_samples(root / shard):
            found[sample["__key__"]] = sample
    keys = list(rows["key"])
    missing = [k for k in keys if k not in found]
    if missing:
        raise FileNotFoundError(f"{len(missing)} code samples missing from their shards, e.g. {missing[:3]}")
    codes = np.stack([codes_from_bytes(found[k]["codes.npy"], f"{found[k]['__url__']}:{k}") for k in keys])
    return CodeSet(
        codes=torch.from_numpy(codes),
        captions=[found[k]["txt"].decode() for k in keys],
        metadata=[json.loads(found[k]["json"]) for k in keys],
        keys=keys,
    )
