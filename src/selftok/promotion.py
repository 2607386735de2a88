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
(docs/experiments.md, "How to compare").
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from selftok.hashing import file_hash
from selftok.tracking import CHALLENGER, CHAMPION, alias_version

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
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
        return Decision(promote=True, reason="no champion yet", challenger_score=challenger_score, champion_score=None, margin=margin)
    gain = challenger_score - champion_score
    required = max(margin, sigmas * se)
    rule = f"margin {margin}" + (f", {sigmas:g} x its standard error {se:.4f}" if sigmas * se > 0 else "")
    promote = gain >= required and gain > 0
    reason = f"beats champion by {gain:+.4f} (needs {required:.4f}: {rule})" if promote else f"gain {gain:+.4f} below {required:.4f} ({rule})"
    return Decision(promote=promote, reason=reason, challenger_score=challenger_score, champion_score=champion_score, margin=margin,
                    required_gain=required)


def refuse_hack(challenger: dict[str, float], pretrained: dict[str, float], champion_score: float | None,
                margin: float) -> Decision | None:
    """A refusal when the challenger (an RL model's benchmark summary) lost more than ``margin`` of
    its pretrained model's strict score, else None."""
    drop = pretrained["overall_strict"] - challenger["overall_strict"]
    if drop > margin:
        reason = (f"strict score {challenger['overall_strict']:.4f} is {drop:.4f} below its pretrained model's "
                  f"(margin {margin}): the gain comes from objects nobody asked for")
        return Decision(promote=False, reason=reason, challenger_score=challenger["overall"], champion_score=champion_score,
                        margin=margin)
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


def find_version(model_name: str, folder: Path) -> str:
    """The registry version whose logged weights hash to this folder's."""
    digest = file_hash(folder)
    for version in MlflowClient().search_model_versions(f"name = '{model_name}'"):
        if version.tags.get("weights.sha256") == digest:
            return str(version.version)
    raise LookupError(f"no version of {model_name} holds the weights in {folder} (sha256 {digest}); rerun the stage that registers it")


def _benchmark_score(model_name: str, version: str, benchmark: str) -> tuple[float | None, float | None]:
    """A version's benchmark score and its standard error, (None, None) when it was scored on another benchmark."""
    tags = MlflowClient().get_model_version(model_name, version).tags
    if tags.get("benchmark.hash") != benchmark or "benchmark.overall" not in tags:
        return None, None
    return float(tags["benchmark.overall"]), float(tags["benchmark.overall_se"]) if "benchmark.overall_se" in tags else None


def promote(model_name: str, folder: Path, generation: dict[str, Any], benchmark: str, margin: float, sigmas: float) -> Decision:
    """Score the RL model in ``folder`` (its ``generation`` summary: ``rl`` and ``pretrained``) as the
    challenger against the champion on the benchmark ``benchmark`` (a hash), record the scores as
    version tags and move the aliases. A champion scored on another benchmark is kept: the scores
    do not compare (move the alias by hand if the new one should replace it)."""
    challenger = find_version(model_name, folder)
    champion = alias_version(model_name, CHAMPION)
    rival = champion is not None and champion != challenger
    score, se = _benchmark_score(model_name, champion, benchmark) if rival else (None, None)
    rl = generation["rl"]
    decision = refuse_hack(rl, generation["pretrained"], score, margin)
    if decision is None and rival and score is None:
        decision = Decision(promote=False, reason=f"champion v{champion} was scored on another benchmark; kept (move the alias "
                            "by hand if the new one should replace it)", challenger_score=rl["overall"], champion_score=None, margin=margin)
    if decision is None:
        decision = decide(rl["overall"], score, margin, gain_se(rl["overall_se"], se), sigmas)
    client = MlflowClient()
    for key, value in {"benchmark.hash": benchmark, "benchmark.overall": rl["overall"], "benchmark.overall_se": rl["overall_se"]}.items():
        client.set_model_version_tag(model_name, challenger, key, str(value))
    previous = apply(model_name, challenger, decision)
    log.info("promotion: %s (challenger v%s, champion before v%s)", decision.reason, challenger, previous)
    return decision
