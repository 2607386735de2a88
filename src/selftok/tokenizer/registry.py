"""Load whichever tokenizer a model folder holds: Selftok (the method) or spatial (the control arm).

Downstream stages (tokenize, VLM decode, evaluation) only use the API the two share, so they
take a folder and let its config.json's ``model_type`` decide the class.
"""

from __future__ import annotations

import json
from pathlib import Path

from selftok.tokenizer.model import CONFIG_FILE, SelftokTokenizer
from selftok.tokenizer.spatial import MODEL_TYPE as SPATIAL_MODEL_TYPE
from selftok.tokenizer.spatial import SpatialTokenizer

AnyTokenizer = SelftokTokenizer | SpatialTokenizer


def load_tokenizer(folder: str | Path, renderer: str | Path | None = None) -> AnyTokenizer:
    """A spatial folder loads as SpatialTokenizer (its decoder is its renderer, so ``renderer``
    must be None); anything else goes to SelftokTokenizer.from_pretrained unchanged."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer config here")
    if json.loads(path.read_text()).get("model_type") == SPATIAL_MODEL_TYPE:
        if renderer is not None:
            raise ValueError(f"{folder}: a spatial tokenizer renders with its own decoder; pass no renderer folder")
        return SpatialTokenizer.from_pretrained(folder)
    return SelftokTokenizer.from_pretrained(folder, renderer=renderer)
