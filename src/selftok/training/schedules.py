"""Learning-rate schedules, as functions of the step (nothing is stored, so a resumed run
continues on the same curve)."""

from __future__ import annotations

import math

from selftok.schema import LRDecay


def lr_factor(step: int, total: int, warmup: int, decay: LRDecay) -> float:
    """Multiplier of the base lr: linear warmup, then constant or cosine down to 10%."""
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to 10%


def warmup_cosine_lr(lr: float, step: int, total: int, warmup: int) -> float:
    """The lr itself: linear warmup, then cosine down to zero at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))
