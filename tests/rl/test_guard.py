"""The diversity guard on hand-made histories: what trips it, what does not, and its baseline."""

import pytest

from selftok.rl.guard import Bound, DiversityGuard
from selftok.rl.params import RLParams


def steps(distinct: list[float], spread: list[float]) -> list[dict[str, float]]:
    return [{"distinct_codes": d, "feature_spread": s} for d, s in zip(distinct, spread, strict=True)]


def guard(min_distinct: float = 0.0, min_spread: float = 0.0, max_frechet: float = 0.0, min_pixels: float = 0.0,
          references: dict[str, float] | None = None) -> DiversityGuard:
    params = RLParams(min_distinct=min_distinct, min_spread_ratio=min_spread, max_frechet_ratio=max_frechet,
                      min_pixel_spread_ratio=min_pixels, guard_window=3)
    made = DiversityGuard.from_params(params, realism=True)
    made.references = dict(references or {})  # as a resumed run sets them from its checkpoint
    return made


def run_guard(guard: DiversityGuard, history: list[dict[str, float]]) -> tuple[int, str] | None:
    """The first step (1-based) at which the guard trips, as the loop calls it, and why."""
    for step in range(1, len(history) + 1):
        reason = guard.check(history[:step])
        if reason:
            return step, reason
    return None


def test_a_dip_that_recovers_passes_and_a_collapse_on_codes_trips() -> None:
    dip = steps([1.0] * 4 + [0.7] * 3 + [1.0] * 5, [4.0] * 12)
    assert run_guard(guard(0.6), dip) is None
    collapse = steps([1.0] * 4 + [0.5] * 6, [4.0] * 10)
    step, reason = run_guard(guard(0.6), collapse)
    assert step == 7 and "distinct code sequences 0.50 < 0.60" in reason  # steps 5-7; steps 4-6 average 0.67


def test_feature_spread_is_measured_against_the_runs_first_window() -> None:
    narrowing = steps([1.0] * 10, [4.0, 4.2, 3.8, 3.0, 2.0, 1.5, 0.9, 0.8, 0.8, 0.7])
    spread = guard(min_spread=0.25)
    step, reason = run_guard(spread, narrowing)
    assert spread.references == {"feature_spread": pytest.approx(4.0)}
    assert step == 9 and "feature spread 0.833 < 0.25 x 4.000" in reason  # (0.9 + 0.8 + 0.8) / 3 = 0.83 < 1.0
    resumed = guard(min_spread=0.25, references={"feature_spread": 1.0})  # from a checkpoint: the baseline is not re-taken
    assert run_guard(resumed, narrowing[6:]) is None


def test_an_inactive_guard_never_trips() -> None:
    off = guard()
    assert not off.active and run_guard(off, steps([0.0] * 5, [0.0] * 5)) is None


def test_realism_check_trips_on_images_that_leave_the_data_while_diversity_holds() -> None:
    drifting = [h | {"frechet_to_real": f} for h, f in zip(steps([1.0] * 8, [4.0] * 8), [0.5, 0.6, 0.7, 0.9, 1.4, 2.5, 3.0, 4.0], strict=True)]
    assert run_guard(guard(0.6, 0.15), drifting) is None  # both diversity measures pass
    realism = guard(0.6, 0.15, max_frechet=3.0)
    step, reason = run_guard(realism, drifting)
    assert realism.references["frechet_to_real"] == pytest.approx(0.6)
    assert step == 7 and "Frechet distance to real renders 2.300 > 3.00 x 0.600" in reason  # (1.4 + 2.5 + 3.0) / 3; steps 4-6: 1.60


def test_pixel_spread_trips_on_near_copies_while_codes_and_features_still_vary() -> None:
    """Guarded runs that hacked the reward: distinct codes and feature spread held, one scene per prompt."""
    pixels = [0.080, 0.078, 0.076, 0.060, 0.045, 0.030, 0.025, 0.020]
    copying = [h | {"pixel_spread": p} for h, p in zip(steps([1.0] * 8, [4.0] * 8), pixels, strict=True)]
    assert run_guard(guard(0.6, 0.15), copying) is None
    step, reason = run_guard(guard(0.6, 0.15, min_pixels=0.5), copying)
    assert step == 7 and "pixel spread 0.033 < 0.50 x 0.078" in reason  # (0.045 + 0.030 + 0.025) / 3 = 0.033 < 0.039


def test_realism_bound_is_off_where_no_real_renders_are_measured() -> None:
    params = RLParams(max_frechet_ratio=3.0, guard_window=3, min_distinct=0.0, min_spread_ratio=0.0, min_pixel_spread_ratio=0.0)
    assert not DiversityGuard.from_params(params, realism=False).active
    assert DiversityGuard.from_params(params, realism=True).active


def test_a_bound_names_its_measure_and_direction() -> None:
    assert Bound("x", "thing", 0.5).breach(0.4, 1.0, 3) == "thing 0.400 < 0.50 x 1.000 (its first 3 steps) over 3 steps"
    assert Bound("x", "thing", 0.5).breach(0.6, 1.0, 3) is None
    assert Bound("x", "thing", 2.0, upper=True).breach(2.5, 1.0, 3).startswith("thing 2.500 > 2.00 x 1.000")
    assert Bound("x", "thing", 0.0).breach(0.0, 1.0, 3) is None  # off
