import dataclasses
from collections import Counter

import pytest
import torch
from scene_fixtures import OracleEvaluator, scene_set

from selftok.eval.evaluator import EvaluatorConfig, SceneEvaluator, objects_from_metadata
from selftok.eval.fidelity import (
    MISSING,
    evaluator_fidelity,
    frechet_distance,
    frechet_evaluator_distance,
    holdout_shape_agreement,
    reconstruction_agreement,
    shape_agreement_by_shape,
    shape_confusion,
)


def test_frechet_distance_matches_closed_forms() -> None:
    a = torch.randn(500, 6, generator=torch.Generator().manual_seed(0)) + 1.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([1.0, 0, 0, 0, 2.0, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(5.0, abs=1e-6)
    # b = 2a: mean gap |mu|^2, covariance term tr S + tr 4S - 2 tr 2S = tr S
    expected = float((a.double().mean(0) ** 2).sum() + torch.cov(a.double().T).trace())
    assert frechet_distance(a, 2 * a) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(2 * a, a) == pytest.approx(frechet_distance(a, 2 * a), rel=1e-9)
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(a, a[:, :3])


def test_evaluator_distance_and_fidelity() -> None:
    data = scene_set("val", 24)
    torch.manual_seed(0)
    model = SceneEvaluator(EvaluatorConfig(width=8))
    assert frechet_evaluator_distance(model, data.images, data.images) == pytest.approx(0.0, abs=1e-6)
    noise = torch.randint(0, 256, data.images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert frechet_evaluator_distance(model, data.images, noise) > 0
    assert evaluator_fidelity(model, data.images, data.images) == 1.0

    oracle = OracleEvaluator()
    oracle.learn(data.images, [objects_from_metadata(m) for m in data.metadata])
    half = torch.cat([data.images[:12], noise[12:]])
    assert evaluator_fidelity(oracle, data.images, half) == 0.5  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="differ"):
        evaluator_fidelity(model, data.images, data.images[:3])


def test_reconstruction_agreement_separates_shape_from_colour() -> None:
    """Reconstructions that keep every object's place and colour but draw it as another shape
    agree on colour and position, not on shape, and no scene is the same."""
    data = scene_set("val", 16)
    truths = [objects_from_metadata(m) for m in data.metadata]
    other = {"circle": "square"}
    reshaped = [[dataclasses.replace(o, shape=other.get(o.shape, "circle")) for o in objects] for objects in truths]
    fakes = 255 - data.images  # any other images: the oracle parses them as taught
    oracle = OracleEvaluator()
    oracle.learn(data.images, truths)
    oracle.learn(fakes, reshaped)
    scores = reconstruction_agreement(oracle, data.images, fakes)  # type: ignore[arg-type]
    assert scores == {"evaluator_fidelity": 0.0, "position_agreement": 1.0, "shape_agreement": 0.0, "color_agreement": 1.0}
    assert reconstruction_agreement(oracle, data.images, data.images)["shape_agreement"] == 1.0  # type: ignore[arg-type]


def test_shape_agreement_splits_by_the_original_shape() -> None:
    """Stars drawn as pentagons (here: as circles) cost stars their agreement and no other shape."""
    data = scene_set("val", 24)
    truths = [objects_from_metadata(m) for m in data.metadata]
    blunt = [[dataclasses.replace(o, shape="circle") if o.shape == "star" else o for o in objects] for objects in truths]
    fakes = 255 - data.images
    oracle = OracleEvaluator()
    oracle.learn(data.images, truths)
    oracle.learn(fakes, blunt)
    by_shape = shape_agreement_by_shape(oracle, data.images, fakes)  # type: ignore[arg-type]
    drawn = {o.shape for objects in truths for o in objects}
    assert "star" in drawn and set(by_shape) == drawn
    assert by_shape == {shape: 0.0 if shape == "star" else 1.0 for shape in drawn}
    stars = sum(o.shape == "star" for objects in truths for o in objects)
    objects = sum(len(objects) for objects in truths)
    overall = reconstruction_agreement(oracle, data.images, fakes)["shape_agreement"]  # type: ignore[arg-type]
    assert overall == pytest.approx(1 - stars / objects)
    with pytest.raises(ValueError, match="differ"):
        shape_agreement_by_shape(oracle, data.images, fakes[:3])  # type: ignore[arg-type]


def test_shape_confusion_says_what_each_lost_shape_became() -> None:
    """Stars redrawn as circles and squares erased: the confusion rows name both, and every
    other shape is read as itself."""
    data = scene_set("val", 24)
    truths = [objects_from_metadata(m) for m in data.metadata]
    changed = [
        [dataclasses.replace(o, shape="circle") if o.shape == "star" else o for o in objects if o.shape != "square"]
        for objects in truths
    ]
    fakes = 255 - data.images
    oracle = OracleEvaluator()
    oracle.learn(data.images, truths)
    oracle.learn(fakes, changed)
    confusion = shape_confusion(oracle, data.images, fakes)  # type: ignore[arg-type]
    counts = Counter(o.shape for objects in truths for o in objects)
    assert counts["star"] and counts["square"]
    assert set(confusion) == set(counts)
    assert confusion["star"] == Counter({"circle": counts["star"]})
    assert confusion["square"] == Counter({MISSING: counts["square"]})
    assert all(confusion[s] == Counter({s: n}) for s, n in counts.items() if s not in ("star", "square"))
    assert shape_agreement_by_shape(oracle, data.images, fakes)["square"] == 0.0  # type: ignore[arg-type]


def test_holdout_agreement_separates_the_held_out_pairs() -> None:
    """One colour-shape pair redrawn as another shape everywhere: named as held out, it alone
    scores 0 and every other object 1; not named, it only dilutes the seen pairs."""
    data = scene_set("val", 24)
    truths = [objects_from_metadata(m) for m in data.metadata]
    first = truths[0][0]
    pair = f"{first.color} {first.shape}"
    other = "circle" if first.shape != "circle" else "square"
    lost = [[dataclasses.replace(o, shape=other) if f"{o.color} {o.shape}" == pair else o for o in objects] for objects in truths]
    fakes = 255 - data.images
    oracle = OracleEvaluator()
    oracle.learn(data.images, truths)
    oracle.learn(fakes, lost)
    assert holdout_shape_agreement(oracle, data.images, fakes, [pair.upper()]) == {"seen_pairs": 1.0, "heldout_pairs": 0.0}  # type: ignore[arg-type]
    held = sum(f"{o.color} {o.shape}" == pair for objects in truths for o in objects)
    total = sum(len(objects) for objects in truths)
    assert holdout_shape_agreement(oracle, data.images, fakes, []) == {"seen_pairs": pytest.approx(1 - held / total)}  # type: ignore[arg-type]
