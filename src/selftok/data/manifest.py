"""The shard manifest ingest writes beside the shards: one row per sample, with the facts the
validate stage checks against the bytes (it trusts none of them)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from PIL import Image

from selftok.paths import SHARDS

SHARD_MANIFEST = Path(SHARDS) / "manifest.parquet"


def _text(value: Any) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def manifest_row(sample: dict[str, Any], split: str, shard: str) -> dict[str, Any]:
    """One manifest row; image facts are None where the bytes do not decode."""
    data = sample.get("png", b"")
    width = height = mode = None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, mode = image.width, image.height, image.mode
    except Exception:
        pass
    return {
        "key": sample["__key__"],
        "split": split,
        "shard": shard,
        "width": width,
        "height": height,
        "mode": mode,
        "caption": _text(sample.get("txt", b"")),
        "sha256": hashlib.sha256(data).hexdigest(),
        "metadata": _text(sample.get("json", b"{}")),
        "members": ",".join(sorted(k for k in sample if not k.startswith("__"))),
    }
