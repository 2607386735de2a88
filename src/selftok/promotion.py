"""Champion/challenger promotion in the MLflow registry.

A newly trained model version always gets the `challenger` alias. It takes `champion` only
when its score on the same held-out benchmark beats the current champion's by at least the
margin and by ``sigmas`` standard errors of the gain (or when there is no champion yet), and
never when it scores below its own pretrained model by more than the margin on the strict score
(correct with no extra object): a model that wins GenEval's rules by drawing clutter is a reward
hack, not an improvement. The decision and both scores are recorded as tags on the model
version, so the registry itself says why each version holds its alias.

New data changes the benchmark (its judge is retrained on it), so the champion's recorded score
no longer compares. The champion is then re-scored on the current benchmark by the caller's
``rescore`` (the evaluate stage loads the registered version with the tokenizer and renderer it
was logged with, and draws with the challenger's sampling seeds), its new score is recorded on
its version, and the usual rule decides; a champion whose artifacts cannot be loaded is kept.

Why the error: one draw of the benchmark moves a score by about 2 points (its `overall_se`), so a
gain of a few points between two single draws is as often noise as progress
(docs/experiments.md, "How to compare").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from selftok.hashing import file_hash
from selftok.tracking import CHALLENGER, CHAMPION, alias_version

log = logging.getLogger(__name__)
# A registered version's number -> its benchmark summary (``overall``, ``overall_se``) on the
# current benchmark; raises LookupError (or OSError) when the version cannot be loaded.
Rescore = Callable[[str], dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Decision:
    promote: bool
    reason: str
    challenger_score: float
    champion_score: float | None
    margin: float
    required_gain: float | None = None  # what the gain had to reach: max(margin, sigmas x its standard error)
    champion_rescored: bool = False  # the champion's score was measured in this round, on the current benchmark


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


def record_score(model_name: str, version: str, benchmark: str, summary: dict[str, Any], rescored: bool = False) -> None:
    """Tag a version with its score on ``benchmark``, so a later round on the same benchmark reads it
    instead of scoring again; ``benchmark.rescored`` marks a score measured after the version's own round."""
    tags = {"benchmark.hash": benchmark, "benchmark.overall": summary["overall"], "benchmark.overall_se": summary["overall_se"]}
    if rescored:
        tags["benchmark.rescored"] = "true"
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, str(value))


def version_folders(model_name: str, version: str, dst: Path) -> dict[str, Path]:
    """The folders a registered version was logged with (``weights``, and for a VLM its ``tokenizer``
    and ``renderer``: tracking.log_model_dir), downloaded under ``dst`` from the store; LookupError
    when the store no longer holds them or the version was logged without a tokenizer."""
    uri = f"models:/{model_name}/{version}"
    try:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        artifacts = mlflow.models.Model.load(root / "MLmodel").flavors["python_function"].get("artifacts") or {}
    except (MlflowException, OSError, KeyError) as error:
        raise LookupError(f"{uri}: its logged model cannot be read from the store ({error})") from error
    folders = {name: root / spec["path"] for name, spec in artifacts.items()}
    missing = [name for name in ("weights", "tokenizer") if not (name in folders and (folders[name] / "config.json").is_file())]
    if missing:
        raise LookupError(f"{uri}: logged without its {' and '.join(missing)} (config.json missing)")
    return folders


class ChampionScore(NamedTuple):
    """What the rule compares with: the champion's score on the current benchmark, or why there is none."""

    score: float | None
    se: float | None
    rescored: bool  # measured in this round by ``rescore``
    why_not: str | None = None  # why there is no score on the current benchmark


def champion_score(model_name: str, champion: str, benchmark: str, rescore: Rescore | None) -> ChampionScore:
    """The champion's score on ``benchmark``: its recorded score when it was scored on this benchmark,
    else ``rescore``'s, recorded on its version; no score (and why) when neither is possible."""
    score, se = _benchmark_score(model_name, champion, benchmark)
    if score is not None:
        return ChampionScore(score, se, rescored=False)
    if rescore is None:
        return ChampionScore(None, None, False, "no way to re-score it here")
    try:
        summary = rescore(champion)
    except (LookupError, OSError) as error:
        log.warning("champion v%s cannot be re-scored on benchmark %s: %s", champion, benchmark, error)
        return ChampionScore(None, None, False, f"it could not be re-scored: {error}")
    record_score(model_name, champion, benchmark, summary, rescored=True)
    log.info("champion v%s re-scored on benchmark %s: %.4f +- %.4f", champion, benchmark, summary["overall"], summary["overall_se"])
    return ChampionScore(float(summary["overall"]), float(summary["overall_se"]), rescored=True)


def _kept(champion: str, why: str, challenger_score: float, margin: float) -> Decision:
    """Today's rule when the champion has no score on the current benchmark: scores on different benchmarks do not compare."""
    return Decision(promote=False, reason=f"champion v{champion} was scored on another benchmark and {why}; kept (move the "
                    "alias by hand if the new one should replace it)", challenger_score=challenger_score, champion_score=None,
                    margin=margin)


def promote(model_name: str, folder: Path, generation: dict[str, Any], benchmark: str, margin: float, sigmas: float,
            rescore: Rescore | None = None) -> Decision:
    """Score the RL model in ``folder`` (its ``generation`` summary: ``rl`` and ``pretrained``) as the
    challenger against the champion on the benchmark ``benchmark`` (a hash), record the scores as
    version tags and move the aliases. A champion scored on another benchmark is re-scored on this
    one by ``rescore`` (same prompts, recipe and seeds as the challenger); one that cannot be is kept.

    The gain's standard error stays ``gain_se`` (two independent draws) even when the champion is
    re-scored with the challenger's seeds: the benchmark summary gives no per-prompt scores to pair,
    and two models' samples from one seed are not the same draw, so this errs on keeping the champion.
    """
    challenger = find_version(model_name, folder)
    champion = alias_version(model_name, CHAMPION)
    rival = champion is not None and champion != challenger
    held = champion_score(model_name, str(champion), benchmark, rescore) if rival else ChampionScore(None, None, False)
    rl = generation["rl"]
    decision = refuse_hack(rl, generation["pretrained"], held.score, margin)
    if decision is None and held.why_not is not None:
        decision = _kept(str(champion), held.why_not, rl["overall"], margin)
    if decision is None:
        decision = decide(rl["overall"], held.score, margin, gain_se(rl["overall_se"], held.se), sigmas)
    decision = replace(decision, champion_rescored=held.rescored)
    record_score(model_name, challenger, benchmark, rl)
    previous = apply(model_name, challenger, decision)
    log.info("promotion: %s (challenger v%s, champion before v%s)", decision.reason, challenger, previous)
    return decision
