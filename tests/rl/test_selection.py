"""Carry-over validation keeps the weights of each new best, and a resume forgets what it redoes (rl.selection)."""

from pathlib import Path

import torch

from selftok.rl.selection import BestWeights


def state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value)}


def test_records_are_the_improving_scores_and_the_best_respects_a_roll_back(tmp_path: Path) -> None:
    best = BestWeights(tmp_path)
    assert best.best() is None
    made = [best.add(step, {"strict": score}, state(step)) for step, score in [(0, 0.3), (4, 0.5), (6, 0.4), (8, 0.5), (10, 0.6)]]
    assert made == [True, True, False, False, True]  # a tie is not a new best: the earlier weights stay chosen
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000000.safetensors", "step_0000004.safetensors",
                                                               "step_0000010.safetensors"]
    assert best.best()["step"] == 10
    assert best.best(at_most=9)["step"] == 4  # the guard kept step 9: the best before it
    assert torch.equal(best.load(4)["w"], state(4)["w"])


def test_reopening_for_a_resume_drops_the_steps_it_will_redo(tmp_path: Path) -> None:
    first = BestWeights(tmp_path)
    for step, score in [(0, 0.3), (4, 0.5), (8, 0.6)]:
        first.add(step, {"strict": score}, state(step))
    reopened = BestWeights.open(tmp_path, resumed_at=6)
    assert [h["step"] for h in reopened.history] == [0, 4]
    assert not (tmp_path / "step_0000008.safetensors").exists()
    assert reopened.best()["step"] == 4
    assert BestWeights.open(tmp_path / "fresh", resumed_at=0).history == []


def test_a_margin_keeps_the_earlier_weights_unless_the_gain_is_beyond_noise(tmp_path: Path) -> None:
    """Margin 2 with standard errors 0.03 on each score: a later step must be higher by more than
    2 x hypot(0.03, 0.03) = 0.085 to replace the best."""
    best = BestWeights(tmp_path, margin=2.0)
    scores = [(0, 0.30), (20, 0.38), (40, 0.36), (60, 0.40), (80, 0.47), (100, 0.50)]
    made = [best.add(step, {"strict": s, "strict_se": 0.03}, state(step)) for step, s in scores]
    assert made == [True, False, False, True, False, True]  # +0.08 is noise, +0.10 is not; each against the best so far
    assert best.best()["step"] == 100 and best.best(at_most=90)["step"] == 60


def test_scores_without_errors_fall_back_to_any_higher_score(tmp_path: Path) -> None:
    best = BestWeights.open(tmp_path, resumed_at=0, margin=2.0)
    assert [best.add(step, {"strict": s}, state(step)) for step, s in [(0, 0.3), (2, 0.31)]] == [True, True]
