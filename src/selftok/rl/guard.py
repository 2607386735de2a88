"""The diversity guard: stop an RL run whose generations collapse, keeping its last healthy checkpoint.

Every measure is averaged over the last ``window`` steps of the training samples:
- the share of distinct code sequences within a group (identical samples: collapse on codes);
- the spread of evaluator features within a group (images that differ only in codes the
  evaluator cannot see: collapse in what the images show);
- the per-pixel spread within a group: near-copies of one scene whose codes differ and whose
  off-distribution features still scatter (docs/experiments.md, "Guards");
- the realism check: the Frechet distance of the samples to real renders of RL prompts on the
  evaluator's features. A policy that wins the judge with images unlike the data (blob
  templates the evaluator reads as several objects) moves far on it while both
  diversity measures stay high.
The share of distinct codes has an absolute floor; the others are held against the run's own
first window (``Bound``), whose values are kept in the checkpoints. A dip that recovers stays
inside the bounds; a run that narrows onto one image per prompt does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from selftok.rl.params import RLParams


def _mean(history: Sequence[dict[str, float]], key: str) -> float:
    return sum(h[key] for h in history) / len(history)


@dataclass(frozen=True)
class Bound:
    """A measure that must stay above (``upper`` False) or below ``ratio`` x its first window's mean."""

    key: str  # the history entry
    label: str  # what a stop reason calls it
    ratio: float  # 0: off
    upper: bool = False

    def breach(self, value: float, reference: float, window: int) -> str | None:
        limit = self.ratio * reference
        if self.ratio <= 0 or (value <= limit if self.upper else value >= limit):
            return None
        return (f"{self.label} {value:.3f} {'>' if self.upper else '<'} {self.ratio:.2f} x {reference:.3f} "
                f"(its first {window} steps) over {window} steps")


@dataclass
class DiversityGuard:
    min_distinct: float  # 0: off
    window: int
    bounds: Sequence[Bound] = ()
    references: dict[str, float] = field(default_factory=dict)  # first-window means, by history key

    @classmethod
    def from_params(cls, params: RLParams, realism: bool) -> DiversityGuard:
        """The guard ``rl`` params ask for; the realism bound only where real renders are measured."""
        return cls(params.min_distinct, params.guard_window, (
            Bound("feature_spread", "feature spread", params.min_spread_ratio),
            Bound("pixel_spread", "pixel spread", params.min_pixel_spread_ratio),
            Bound("frechet_to_real", "Frechet distance to real renders", params.max_frechet_ratio if realism else 0.0, upper=True),
        ))

    @property
    def active(self) -> bool:
        return self.min_distinct > 0 or any(b.ratio > 0 for b in self.bounds)

    def check(self, history: Sequence[dict[str, float]]) -> str | None:
        """Why the run has collapsed, or None; ``history`` holds the steps run by this process."""
        if not self.active or len(history) < self.window:
            return None
        recent = history[-self.window :]
        distinct = _mean(recent, "distinct_codes")
        if distinct < self.min_distinct:
            return f"distinct code sequences {distinct:.2f} < {self.min_distinct:.2f} over {self.window} steps"
        for bound in self.bounds:
            if bound.ratio <= 0:
                continue
            value = _mean(recent, bound.key)
            reference = self.references.setdefault(bound.key, value)
            if reason := bound.breach(value, reference, self.window):
                return reason
        return None
