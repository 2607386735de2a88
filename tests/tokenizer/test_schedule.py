"""The one convention: index 0 = v1 (coarsest), t=1 pure noise (all visible), t=0 clean (none visible)."""

from __future__ import annotations

import pytest
import torch

from selftok.tokenizer.schedule import PAPER_ALLOCATION, allocation, first_visible, sample_limits, visible_mask


@pytest.mark.parametrize("kind", ["custom", "uniform"])
def test_allocation_sums_to_k(kind: str) -> None:
    for k in [1, 2, 3, 5, 7, 16, 31, 32, 64, 100, 512, 1024]:
        counts = allocation(k, kind)  # type: ignore[arg-type]
        assert sum(counts) == k and len(counts) == 5 and min(counts) >= 0


def test_paper_allocation_at_512() -> None:
    assert allocation(512) == list(PAPER_ALLOCATION)
    t = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], dtype=torch.float64)
    assert first_visible(t, 512).tolist() == [0, 16, 64, 136, 320, 512]


@pytest.mark.parametrize("kind", ["custom", "uniform"])
@pytest.mark.parametrize("k", [1, 4, 32, 512])
def test_endpoints_and_monotone(kind: str, k: int) -> None:
    t = torch.linspace(1.0, 0.0, 2001)
    first = first_visible(t, k, kind)  # type: ignore[arg-type]
    assert first[0] == 0, "all tokens visible at pure noise"
    assert first[-1] == k, "no token visible on the clean image"
    assert (first[1:] >= first[:-1]).all(), "tokens are hidden one after another as t falls"
    assert set(first.tolist()) == set(range(k + 1)), "every token is hidden at some time"


def test_custom_hides_coarse_tokens_late_in_the_noisy_band() -> None:
    # Paper order: the noisiest fifth hides only the first 16/512 of the tokens.
    assert first_visible(torch.tensor([0.81]), 32).item() <= allocation(32)[0]


def test_visible_mask_is_a_suffix_cut_by_the_limit() -> None:
    mask = visible_mask(torch.tensor([0, 1, 3, 4]), torch.tensor([4, 4, 2, 4]), 4)
    assert mask.tolist() == [
        [True, True, True, True],
        [False, True, True, True],
        [False, False, False, False],
        [False, False, False, False],
    ]


def test_sample_limits_fractions() -> None:
    g = torch.Generator().manual_seed(0)
    limit = sample_limits(20000, 8, prefix_fraction=0.2, no_token_fraction=0.1, generator=g)
    assert abs((limit == 0).float().mean().item() - 0.1) < 0.01
    assert ((limit >= 0) & (limit <= 8)).all()
    cut = ((limit > 0) & (limit < 8)).float().mean().item()
    assert abs(cut - 0.2 * 7 / 8) < 0.015  # a cut at L = K is no cut
    assert (sample_limits(100, 8, 0.0, 0.0) == 8).all()
