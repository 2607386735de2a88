"""Carry-over validation: choose RL's weights by prompts the policy never trains on.

RL learns the prompts it trains on and can unlearn others: on shape-carrying tokens it drew its
own single-object shapes for held-out ones (docs/experiments.md, "RL recipes"). The reward on
training prompts cannot show that. So the stage scores the policy on ``rl_select``, prompt groups
RL never trains on (selftok.eval.geneval), every ``rl.val_every`` steps, and keeps the weights that
scored best, the pretrained ones (step 0) included. The benchmark's sets (``rl_test``,
``compositional``) stay unseen: they judge the choice, not make it.

A score is one draw of images, and the best of fifteen noisy draws is usually a lucky one
(docs/experiments.md, "Selection of the RL weights"). So with a ``margin`` a later step beats
the best only when its score is higher by more than ``margin`` standard errors of the difference, from the
``<key>_se`` the scores carry; otherwise the earlier weights, in the end the pretrained ones, stay.

Only records are kept on disk: weights whose score beats the best before it. The best weights at
or before any step are then the newest record up to it, which is what the diversity guard needs
when it rolls a run back to an earlier step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

Validate = Callable[[], dict[str, float]]  # scores of the current policy: at least "strict"
HISTORY = "history.json"


@dataclass
class BestWeights:
    """Validation scores by step, and the weights of each new best (``folder/step_NNNNNNN.safetensors``)."""

    folder: Path
    key: str = "strict"
    margin: float = 0.0  # in standard errors of the difference between two scores
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, folder: Path, resumed_at: int, margin: float = 0.0) -> BestWeights:
        """The records of an earlier process, without those past the step a resume restarts from."""
        path = folder / HISTORY
        best = cls(folder, margin=margin, history=json.loads(path.read_text()) if path.is_file() else [])
        best.truncate(resumed_at)
        return best

    def truncate(self, step: int) -> None:
        """Forget the scores and weights past ``step`` (a resume redoes them; a guard roll-back discards them)."""
        self.history = [h for h in self.history if h["step"] <= step]
        for weights in self.folder.glob("step_*.safetensors"):
            if _step(weights) > step:
                weights.unlink()
        if self.folder.is_dir():
            self._write()

    def validated(self, step: int) -> bool:
        return any(h["step"] == step for h in self.history)

    def add(self, step: int, scores: dict[str, float], state: dict[str, torch.Tensor]) -> bool:
        """Record ``scores`` at ``step``; keep ``state`` if they beat the best so far (by the margin). True if they did."""
        best = self.best()
        record = best is None or scores[self.key] > best[self.key] + self.margin * self._difference_se(scores, best)
        self.folder.mkdir(parents=True, exist_ok=True)
        if record:
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(self._weights(step)))
        self.history.append({"step": step, **scores, "record": record})
        self._write()  # after the weights: a record in the history always has them
        return record

    def best(self, at_most: int | None = None) -> dict[str, Any] | None:
        return best_entry(self.history, at_most)

    def _difference_se(self, a: dict[str, Any], b: dict[str, Any]) -> float:
        """Standard error of the difference of two independent scores (0 where they carry none)."""
        return math.hypot(a.get(f"{self.key}_se", 0.0), b.get(f"{self.key}_se", 0.0))

    def load(self, step: int) -> dict[str, torch.Tensor]:
        return load_file(str(self._weights(step)))

    def _write(self) -> None:
        scratch = self.folder / f"{HISTORY}.tmp"
        scratch.write_text(json.dumps(self.history, indent=1))
        scratch.replace(self.folder / HISTORY)

    def _weights(self, step: int) -> Path:
        return self.folder / f"step_{step:07d}.safetensors"


def best_entry(history: list[dict[str, Any]], at_most: int | None = None) -> dict[str, Any] | None:
    """The best entry of a validation history at or before ``at_most``, or None: its newest record
    (only a score above the best before it, by the margin, makes one; of equal scores the earliest)."""
    records = [h for h in history if h["record"] and (at_most is None or h["step"] <= at_most)]
    return records[-1] if records else None


def _step(path: Path) -> int:
    return int(path.stem.removeprefix("step_"))
