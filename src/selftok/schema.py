"""Base and shared field types of every typed params section, and the params hash.

Every default here and in the sections built on it is the default profile: params.yaml is
generated from these models (``selftok profile show default``), so a value lives in one place.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

LRDecay = Literal["cosine", "constant"]  # after warmup: cosine towards 10% of the lr, or constant
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(ge=1)]
EdgeWeight = Annotated[float, Field(ge=0.0)]  # extra loss weight near target edges (selftok.tokenizer.loss)


class StrictModel(BaseModel):
    """A params section. Extra keys are rejected so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)


def fill_absent(data: Any, values: Mapping[str, Any]) -> Any:
    """``data`` (raw input of a section) with ``values`` for the keys it leaves out or sets to null.

    Used by the sections whose optional keys are derived from others when absent, so the
    derived value is an ordinary field for every reader and the file never has to repeat it.
    """
    if not isinstance(data, Mapping):
        return data
    return {**data, **{key: value for key, value in values.items() if data.get(key) is None}}


def positive_int(value: Any) -> int | None:
    """``value`` as the positive int a field would read it as, None when it is not one (that
    field's own validation then names the bad value)."""
    try:
        return TypeAdapter(Positive).validate_python(value)
    except ValidationError:
        return None


def params_hash(data: Any) -> str:
    """Stable short hash of plain data (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
