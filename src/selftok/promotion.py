"""Champion/challenger promotion in the MLflow registry.

A newly trained model version always gets the `challenger` alias. It takes `champion` only
when its score on the same held-out benchmark beats the current champion's by at least the
margin and by ``sigmas`` standard errors of the gain (or when there is no champion yet), and
never when it scores below its own pretrained model by more than the margin on the strict score
(correct with no extra object): a model that wins GenEval's rules by drawing clutter is a reward
hack, not an improvement. The decision and both scores are recorded as tags on the model
version, so the registry itself says why each version holds its alias.

Why the error: one draw of the benchmark moves a score by about 2 points (its `overall_se`), so a
gain of a few points between two single draws is as often noise as progress
(docs/rl_finetune.md, "The benchmark's own noise").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from mlflow.tracking import MlflowClient

from selftok.tracking import CHALLENGER, CHAMPION, alias_version


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    margin: float
    required_gain: float | None = None  # what the gain had to reach: max(margin, sigmas x its standard error)


def gain_se(challenger_se: float, champion_se: float | None) -> float:
    """Standard error of challenger - champion from two independent draws of the benchmark. A
    champion scored before the error was recorded is taken to be as noisy as the challenger: the
    same benchmark (prompts, images per prompt, judge) gives scores of the same error."""
    return math.hypot(challenger_se, challenger_se if champion_se is None else champion_se)


def decide(challenger_score: float, champion_score: float | None, margin: float, se: float = 0.0,
           sigmas: float = 0.0) -> Decision:
    """Promote when there is no champion, or the challenger beats it by at least ``margin`` and by
    at least ``sigmas`` x ``se`` (the gain's standard error; 0 leaves the margin alone)."""
    if champion_score is None:
        return Decision(True, "no champion yet", challenger_score, None, margin)
    gain = challenger_score - champion_score
    required = max(margin, sigmas * se)
    rule = f"margin {margin}" + (f", {sigmas:g} x its standard error {se:.4f}" if sigmas * se > 0 else "")
    if gain >= required and gain > 0:
        return Decision(True, f"beats champion by {gain:+.4f} (needs {required:.4f}: {rule})", challenger_score,
                        champion_score, margin, required)
    return Decision(False, f"gain {gain:+.4f} below {required:.4f} ({rule})", challenger_score, champion_score, margin,
                    required)


def refuse_hack(challenger: dict[str, float], pretrained: dict[str, float], champion_score: float | None,
                margin: float) -> Decision | None:
    """A refusal when the challenger (an RL model's benchmark summary) lost more than ``margin`` of
    its pretrained model's strict score, else None."""
    drop = pretrained["overall_strict"] - challenger["overall_strict"]
    if drop > margin:
        return Decision(False, f"strict score {challenger['overall_strict']:.4f} is {drop:.4f} below its pretrained model's "
                        f"(margin {margin}): the gain comes from objects nobody asked for", challenger["overall"],
                        champion_score, margin)
    return None


def apply(model_name: str, version: str, decision: Decision) -> str | None:
    """Set the aliases the decision calls for; returns the previous champion version."""
    client = MlflowClient()
    previous = alias_version(model_name, CHAMPION)
    client.set_registered_model_alias(model_name, CHALLENGER, version)
    if decision.promote:
        client.set_registered_model_alias(model_name, CHAMPION, version)
    for key, value in asdict(decision).items():
        client.set_model_version_tag(model_name, version, f"promotion.{key}", str(value))
    client.set_model_version_tag(model_name, version, "promotion.previous_champion", str(previous))
    return previous
