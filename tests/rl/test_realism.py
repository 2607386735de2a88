"""The per-image realism penalty: about the data's own spacing for images like the data, growing away from it."""

import pytest
import torch

from selftok.data.scenes import make_prompt
from selftok.eval.evaluator import ParsedObject
from selftok.rl.realism import RealismPenalty, kth_neighbour_distance
from selftok.rl.trainer import evaluator_reward


def cluster(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)) + shift


def test_kth_neighbour_distance_leaves_the_query_itself_out_only_when_asked() -> None:
    points = torch.tensor([[0.0], [1.0], [3.0]])
    assert kth_neighbour_distance(points, points, 1).tolist() == [0.0, 0.0, 0.0]
    assert kth_neighbour_distance(points, points, 1, exclude_self=True).tolist() == [1.0, 1.0, 2.0]
    assert kth_neighbour_distance(points, points, 2, exclude_self=True).tolist() == [3.0, 2.0, 3.0]


def test_images_like_the_data_cost_nothing_and_far_ones_cost_in_proportion() -> None:
    realism = RealismPenalty(cluster(400, 0), coef=2.0)
    like = realism.ratio(cluster(200, 1))
    assert 0.8 < float(like.median()) < 1.25  # new draws of the same distribution: the data's own spacing
    far = realism.ratio(cluster(200, 2, shift=3.0))
    assert float(far.min()) > 1.5
    assert torch.allclose(realism.penalty(far), 2.0 * (far - 1))
    assert realism.penalty(torch.tensor([0.5, 1.0])).tolist() == [0.0, 0.0]


def test_copies_among_the_real_renders_count_once_and_too_few_are_refused() -> None:
    bank = cluster(50, 0)
    assert RealismPenalty(torch.cat([bank, bank[:40], bank[:40]]), coef=1.0).scale == RealismPenalty(bank, coef=1.0).scale
    with pytest.raises(ValueError, match="more than k = 5 distinct real renders, got 3"):
        RealismPenalty(cluster(3, 0).repeat(4, 1), coef=1.0)
    blurred = cluster(1, 0) + 1e-6 * cluster(20, 1)  # a tokenizer that decodes every scene to one image
    with pytest.raises(ValueError, match="all but identical"):
        RealismPenalty(blurred, coef=1.0)


def test_reward_of_a_correct_image_far_from_the_data_is_lowered() -> None:
    """Two correct images of one circle; the second's features lie far from the real renders'."""
    bank = cluster(100, 0)

    class Evaluator:
        def parse(self, images: torch.Tensor) -> list[list[ParsedObject]]:
            return [[ParsedObject("circle", "red", (0.0, 0.0, 8.0, 8.0))] for _ in images]

        def features(self, images: torch.Tensor) -> torch.Tensor:
            return torch.stack([bank[0] + 0.01, bank[0] + 10.0])

    rows, images = [make_prompt("single_object", ["circle"])] * 2, torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    plain = evaluator_reward(Evaluator())(rows, images)
    assert plain.reward.tolist() == [1.0, 1.0] and plain.realism is None
    scored = evaluator_reward(Evaluator(), realism=RealismPenalty(bank, coef=0.5))(rows, images)
    assert scored.correct == [True, True] and scored.realism is not None
    assert scored.reward[0] == 1.0 and scored.reward[1] < 1.0 - 0.5  # ratio far above 2
    assert float(scored.reward[1]) == pytest.approx(1.0 - 0.5 * (float(scored.realism[1]) - 1))
