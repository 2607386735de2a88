"""Scheduled retraining: take new data, validate, reproduce what changed, evaluate, promote.

New data means a new generator seed for the built-in scenes (written to
``data.scenes.seed`` in params.yaml: the one line this flow edits, logged in its run), or, for
a folder or shard source, a forced re-ingest (DVC cannot see inside those sources; if their
content did not change, the re-ingested shards hash the same and every later stage skips).
The evaluate stage then compares the new models with the champions and moves the aliases.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import pipeline
from selftok.config import load_params

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


@flow(name="selftok-retrain", log_prints=True)
def retrain(root: str = ".", data_seed: int | None = None) -> dict[str, Any]:
    """One retraining round; ``data_seed`` defaults to the current scene seed + 1."""
    logger = get_run_logger()
    project = Path(root).resolve()
    params = load_params(project / "params.yaml")
    force: list[str] = []
    if params.data.source == "scenes":
        seed = params.data.scenes.seed + 1 if data_seed is None else data_seed
        old = set_scene_seed(project / "params.yaml", seed)
        logger.info("new data: data.scenes.seed %d -> %d", old, seed)
    else:
        force = ["ingest"]
        logger.info("new data: re-ingesting %s source", params.data.source)
    results = pipeline(root=str(project), force_stages=force)
    evaluate = project / "metrics" / "evaluate.json"
    promotion = json.loads(evaluate.read_text()).get("promotion", {}) if evaluate.is_file() else {}
    return {"stages": results, "promotion": promotion}


if __name__ == "__main__":
    retrain()
