"""Base for every typed params section: unknown keys and silent coercions are errors."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

LRDecay = Literal["cosine", "constant"]  # after warmup: cosine towards 10% of the lr, or constant


class StrictModel(BaseModel):
    """A params section. Extra keys are rejected so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)
