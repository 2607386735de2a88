"""Scheduled retraining: take new data, validate, reproduce what changed, evaluate, promote.

New data means a new generator seed for the built-in scenes (written to
``data.scenes.seed`` in params.yaml: the one line this flow edits, logged in its run), or, for
a folder or shard source, a forced re-ingest (DVC cannot see inside those sources; if their
content did not change, the re-ingested shards hash the same and every later stage skips).
The evaluate stage then compares the new models with the champions and moves the aliases; new
data changes the benchmark (its judge is retrained), so the champion is re-scored on the new one
first (``champion_rescored`` in the decision) and the usual rule decides.

Each round's decision (promoted or kept, the scores, the gain it needed, the champion version
before and after) is logged as an MLflow run of its own and shown in the flow's summary artifact;
a round in which nothing changed says so instead of repeating the last round's decision.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import pipeline
from selftok import tracking
from selftok.config import load_params
from selftok.stages.arms import SELFTOK

SCENE_SEED = re.compile(r"(?m)^(  scenes:\n(?:    .*\n|\s*\n)*?    seed: )(-?\d+)")


def set_scene_seed(params_file: Path, seed: int) -> int:
    """Set data.scenes.seed in place, keeping comments and layout; returns the old seed."""
    text = params_file.read_text()
    match = SCENE_SEED.search(text)
    if match is None:
        raise ValueError(f"{params_file}: no data.scenes.seed line to update (add `seed: 0` under data.scenes)")
    params_file.write_text(text[: match.start(2)] + str(seed) + text[match.end(2) :])
    if load_params(params_file).data.scenes.seed != seed:
        params_file.write_text(text)
        raise ValueError(f"{params_file}: updating data.scenes.seed did not take; file restored")
    return int(match.group(2))


def round_decision(project: Path, results: list[dict[str, Any]], before: str | None) -> dict[str, Any]:
    """What this round decided: evaluate's promotion when it ran, else that nothing was re-decided."""
    ran = next((r for r in results if r["stage"] == "evaluate" and not r["skipped"]), None)
    after = tracking.alias_version(SELFTOK.registered_vlm, tracking.CHAMPION)
    if ran is None:
        return {"decided": False, "reason": "evaluate skipped: nothing changed", "champion_before": before, "champion_after": after}
    promotion = json.loads((project / "metrics" / "evaluate.json").read_text())["promotion"]
    challenger = tracking.alias_version(SELFTOK.registered_vlm, tracking.CHALLENGER)
    return {"decided": True, **promotion, "challenger": challenger, "champion_before": before, "champion_after": after}


def decision_markdown(seeds: tuple[int, int] | None, results: list[dict[str, Any]], decision: dict[str, Any]) -> str:
    """The summary artifact: the new data, stages run or skipped, and the promotion with its numbers."""
    ran = [r["stage"] for r in results if not r["skipped"]]
    lines = ["# Selftok retraining round", ""]
    lines += [f"new data: data.scenes.seed {seeds[0]} -> {seeds[1]}" if seeds and seeds[0] != seeds[1] else "new data: none"]
    lines += [f"stages run: {', '.join(ran) or 'none (all skipped)'}", "", "| decision | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |" for key, value in decision.items()]
    return "\n".join(lines)


def log_decision(project: Path, experiment: str, seeds: tuple[int, int] | None, decision: dict[str, Any], summary: str) -> None:
    """One MLflow run per round: the decision's numbers as metrics, its reason and versions as tags."""
    tracking.configure(project, experiment)
    tags = {"kind": "retrain", **{f"promotion.{k}": str(v) for k, v in decision.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}}
    with mlflow.start_run(run_name="retrain", tags=tags):
        if seeds:
            mlflow.log_params({"data.scenes.seed.before": seeds[0], "data.scenes.seed.after": seeds[1]})
        numbers = {f"promotion.{k}": float(v) for k, v in decision.items() if isinstance(v, (int, float)) and v is not None}
        mlflow.log_metrics(numbers)
        mlflow.log_text(summary, "retrain.md")


@flow(name="selftok-retrain", log_prints=True)
def retrain(root: str = ".", data_seed: int | None = None) -> dict[str, Any]:
    """One retraining round; ``data_seed`` defaults to the current scene seed + 1."""
    logger = get_run_logger()
    project = Path(root).resolve()
    params = load_params(project / "params.yaml")
    force: list[str] = []
    seeds: tuple[int, int] | None = None
    if params.data.source == "scenes":
        seed = params.data.scenes.seed + 1 if data_seed is None else data_seed
        seeds = (set_scene_seed(project / "params.yaml", seed), seed)
        logger.info("new data: data.scenes.seed %d -> %d", *seeds)
    else:
        force = ["ingest"]
        logger.info("new data: re-ingesting %s source", params.data.source)
    tracking.configure(project, params.tracking.experiment)
    before = tracking.alias_version(SELFTOK.registered_vlm, tracking.CHAMPION)
    results = pipeline(root=str(project), force_stages=force)
    decision = round_decision(project, results, before)
    summary = decision_markdown(seeds, results, decision)
    log_decision(project, params.tracking.experiment, seeds, decision, summary)
    create_markdown_artifact(summary, key="selftok-retrain-decision", description="This round's promotion decision and its numbers")
    logger.info("retrain: %s", decision["reason"])
    return {"stages": results, "promotion": decision}


if __name__ == "__main__":
    retrain()
