import json
from pathlib import Path

import pytest
import torch

from selftok.config import load_params
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.params import JUDGE_SEED_OFFSET, EvaluatorParams
from selftok.eval.training import judge_params, judge_seed
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
    assert any((project / "checkpoints" / "evaluator").iterdir())  # resume state kept

    # the benchmark's independent judge: same keys, another seed and width, its own weights
    judge = metrics["judge"]
    assert set(judge) >= KEYS
    assert all(0.0 <= judge[k] <= 1.0 for k in ("scene_accuracy", "color_accuracy", "heldout_render_overall", "noise_overall"))
    assert all(0.0 <= v <= 1.0 for v in judge["degraded"].values())
    other = SceneEvaluator.load(project / "models" / "judge")
    assert other.config.width == judge_params(load_params(project / "params.yaml").evaluator).width > model.config.width
    assert other.config.image_size == model.config.image_size
    assert judge["params_thousands"] > evaluator["params_thousands"]
    ours, theirs = model.state_dict(), other.state_dict()
    assert any(ours[k].shape != theirs[k].shape or not torch.equal(ours[k], theirs[k]) for k in ours)
    assert any((project / "checkpoints" / "judge").iterdir())


def test_the_judge_is_wider_and_seeded_apart_from_the_evaluator() -> None:
    """Independence by construction: another width (a multiple of 4, always wider), another seed."""
    for width, expected in ((4, 8), (8, 12), (16, 24), (24, 36), (30, 48)):
        assert judge_params(EvaluatorParams(width=width)).width == expected
    params = EvaluatorParams(width=16, epochs=3)
    assert judge_params(params).model_dump(exclude={"width"}) == params.model_dump(exclude={"width"})
    assert judge_seed(7) == 7 + JUDGE_SEED_OFFSET != 7
