import json
from pathlib import Path

import pytest

from selftok.eval.evaluator import SceneEvaluator
from selftok.stages.base import run_stage

KEYS = {
    "scene_accuracy",
    "count_accuracy",
    "shape_accuracy",
    "color_accuracy",
    "position_accuracy",
    "relation_accuracy",
    "degraded",
    "heldout_render_overall",
    "heldout_render",
    "noise_overall",
    "shuffled_overall",
    "shuffled_chance_overall",
    "reward_matched_mean",
    "reward_mismatched_mean",
}


@pytest.mark.integration
def test_train_evaluator_stage_on_the_smoke_profile(project: Path) -> None:
    run_stage("ingest", project)
    run_stage("validate", project)
    metrics = run_stage("train_evaluator", project)
    evaluator = metrics["evaluator"]
    assert set(evaluator) >= KEYS
    assert set(evaluator["degraded"]) >= {"scene_accuracy", "color_accuracy"}
    assert all(0.0 <= evaluator[k] <= 1.0 for k in ("scene_accuracy", "heldout_render_overall", "noise_overall"))
    assert json.loads((project / "metrics" / "train_evaluator.json").read_text()) == metrics
    model = SceneEvaluator.load(project / "models" / "evaluator")
    assert model.config.image_size == 16
    assert sorted(p.name for p in (project / "models" / "evaluator").iterdir()) == ["config.json", "model.safetensors"]
