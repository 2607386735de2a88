import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scene_fixtures import scene_set

from selftok.eval.evaluator import (
    EvaluatorConfig,
    ParsedObject,
    SceneEvaluator,
    accuracy,
    as_model_input,
    objects_from_metadata,
    pair_accuracy,
    targets_for,
)


def raw_from_targets(target: torch.Tensor, config: EvaluatorConfig) -> torch.Tensor:
    """Per-cell outputs that a perfect model would produce for these targets."""
    s, c = len(config.shapes), len(config.colors)
    raw = torch.full((*target.shape[:3], config.channels), -8.0)
    present = target[..., 0] > 0.5
    raw[..., 0] = torch.where(present, 8.0, -8.0)
    raw[..., 1 : 1 + s] += 16 * torch.nn.functional.one_hot(target[..., 1].long(), s)
    raw[..., 1 + s : 1 + s + c] += 16 * torch.nn.functional.one_hot(target[..., 2].long(), c)
    raw[..., 1 + s + c :] = torch.logit(target[..., 3:7].clamp(1e-5, 1 - 1e-5))
    return raw


def test_decoding_perfect_outputs_gives_back_the_scene() -> None:
    data = scene_set("val", 64)
    config = EvaluatorConfig()
    model = SceneEvaluator(config)
    decoded = model.decode(raw_from_targets(targets_for(data.metadata, config), config))
    truths = [objects_from_metadata(m) for m in data.metadata]
    for truth, parsed in zip(truths, decoded, strict=True):
        assert sorted((o.shape, o.color) for o in truth) == sorted((o.shape, o.color) for o in parsed)
        for obj in truth:
            twin = min(parsed, key=lambda p: sum(abs(a - b) for a, b in zip(p.box, obj.box, strict=True)))
            assert np.allclose(twin.box, obj.box, atol=1e-3)
    assert accuracy(truths, decoded, 3.2)["scene_accuracy"] == 1.0


def test_accuracy_counts_what_is_wrong() -> None:
    truth = [ParsedObject("circle", "red", (0, 0, 10, 10)), ParsedObject("star", "blue", (20, 20, 30, 30))]
    wrong_colour = [truth[0], ParsedObject("star", "red", (20, 20, 30, 30))]
    moved = [truth[0], ParsedObject("star", "blue", (10, 10, 20, 20))]
    result = accuracy([truth, truth, truth, truth], [truth, wrong_colour, moved, truth[:1]], 3.2)
    assert result["scene_accuracy"] == 0.25 and result["count_accuracy"] == 0.75
    assert result["color_accuracy"] == 5 / 8 and result["shape_accuracy"] == 6 / 8 and result["position_accuracy"] == 6 / 8
    assert pair_accuracy([truth, truth], [truth, wrong_colour], 3.2, {("blue", "star")}) == 0.5
    assert pair_accuracy([truth], [truth], 3.2, {("green", "square")}) is None


def test_model_io_and_input_checks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SceneEvaluator(EvaluatorConfig(image_size=16, width=8)).eval()
    images = scene_set("val", 6, image_size=16).images
    model.save(tmp_path / "evaluator", {"trained_on": {"train": 0}})
    assert sorted(p.name for p in (tmp_path / "evaluator").iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "evaluator" / "config.json").read_text())["model_type"] == "selftok-evaluator"
    loaded = SceneEvaluator.from_pretrained(tmp_path / "evaluator")
    assert torch.equal(loaded.features(images), model.features(images))
    assert loaded.parse(images) == model.parse(images)
    predicted = loaded.predict(images.permute(0, 2, 3, 1).numpy())
    assert len(predicted) == 6 and all(set(o) == {"shape", "color", "box", "score"} for objs in predicted for o in objs)
    assert torch.equal(as_model_input(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
    assert torch.equal(as_model_input(torch.tensor([-3.0, 0.5])), torch.tensor([-1.0, 0.5]))
    with pytest.raises(TypeError):
        as_model_input(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"images \[N, 3, 16, 16\]"):
        model.parse(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match="train_evaluator"):
        SceneEvaluator.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="power of two"):
        EvaluatorConfig(image_size=24, grid=4)
