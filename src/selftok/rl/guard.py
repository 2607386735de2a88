"""The diversity guard: stop an RL run whose generations collapse, keeping its last healthy checkpoint.

Two measures from the training samples, each averaged over the last ``window`` steps:
- the share of distinct code sequences within a group (identical samples: collapse on codes);
- the spread of evaluator features within a group, against the run's own first window (images
  that differ only in codes the evaluator cannot see: collapse in what the images show).
A dip that recovers stays above a low bar; a run that narrows onto one image per prompt does not.

The realism check (``max_frechet_ratio``) watches a third measure: the Frechet distance of each
step's samples to real renders of RL prompts on the evaluator's features, against the run's first
window. A policy that wins the judge with images unlike the data (blob templates the evaluator
reads as several objects; docs/rl_finetune.md, tenth session) moves far on it while both
diversity measures stay high.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def _mean(history: Sequence[dict[str, float]], key: str) -> float:
    return sum(h[key] for h in history) / len(history)


@dataclass
class DiversityGuard:
    min_distinct: float  # 0: off
    min_spread_ratio: float  # of the first window's feature spread; 0: off
    window: int
    max_frechet_ratio: float = 0.0  # of the first window's Frechet distance to real renders; 0: off
    spread_reference: float | None = None  # kept in checkpoints so that a resumed run keeps its baseline
    frechet_reference: float | None = None

    @property
    def active(self) -> bool:
        return self.min_distinct > 0 or self.min_spread_ratio > 0 or self.max_frechet_ratio > 0

    def check(self, history: Sequence[dict[str, float]]) -> str | None:
        """Why the run has collapsed, or None; ``history`` holds the steps run by this process."""
        if not self.active or len(history) < self.window:
            return None
        recent = history[-self.window :]
        if self.spread_reference is None:
            self.spread_reference = _mean(recent, "feature_spread")
        distinct, spread = _mean(recent, "distinct_codes"), _mean(recent, "feature_spread")
        if distinct < self.min_distinct:
            return f"distinct code sequences {distinct:.2f} < {self.min_distinct:.2f} over {self.window} steps"
        if spread < self.min_spread_ratio * self.spread_reference:
            return (f"feature spread {spread:.2f} < {self.min_spread_ratio:.2f} x {self.spread_reference:.2f} "
                    f"(its first {self.window} steps) over {self.window} steps")
        if self.max_frechet_ratio > 0:
            frechet = _mean(recent, "frechet_to_real")
            if self.frechet_reference is None:
                self.frechet_reference = frechet
            if frechet > self.max_frechet_ratio * self.frechet_reference:
                return (f"Frechet distance to real renders {frechet:.2f} > {self.max_frechet_ratio:.2f} x "
                        f"{self.frechet_reference:.2f} (its first {self.window} steps) over {self.window} steps")
        return None
