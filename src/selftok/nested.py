"""Nested mappings and their dotted keys (``a.b.c``), the form params keys, MLflow params and
metrics take."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {'a.b.c': value}."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def select(data: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted key."""
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node
