"""The diversity guard on hand-made histories: what trips it, what does not, and its baseline."""

import pytest

from selftok.rl.guard import DiversityGuard


def steps(distinct: list[float], spread: list[float]) -> list[dict[str, float]]:
    return [{"distinct_codes": d, "feature_spread": s} for d, s in zip(distinct, spread, strict=True)]


def run_guard(guard: DiversityGuard, history: list[dict[str, float]]) -> tuple[int, str] | None:
    """The first step (1-based) at which the guard trips, as the loop calls it, and why."""
    for step in range(1, len(history) + 1):
        reason = guard.check(history[:step])
        if reason:
            return step, reason
    return None


def test_a_dip_that_recovers_passes_and_a_collapse_on_codes_trips() -> None:
    dip = steps([1.0] * 4 + [0.7] * 3 + [1.0] * 5, [4.0] * 12)
    assert run_guard(DiversityGuard(0.6, 0.0, 3), dip) is None
    collapse = steps([1.0] * 4 + [0.5] * 6, [4.0] * 10)
    step, reason = run_guard(DiversityGuard(0.6, 0.0, 3), collapse)
    assert step == 7 and "distinct code sequences 0.50 < 0.60" in reason  # steps 5-7; steps 4-6 average 0.67


def test_feature_spread_is_measured_against_the_runs_first_window() -> None:
    narrowing = steps([1.0] * 10, [4.0, 4.2, 3.8, 3.0, 2.0, 1.5, 0.9, 0.8, 0.8, 0.7])
    guard = DiversityGuard(0.0, 0.25, 3)
    step, reason = run_guard(guard, narrowing)
    assert guard.spread_reference == pytest.approx(4.0)
    assert step == 9 and "feature spread 0.83 < 0.25 x 4.00" in reason  # (0.9 + 0.8 + 0.8) / 3 = 0.83 < 1.0
    resumed = DiversityGuard(0.0, 0.25, 3, spread_reference=1.0)  # from a checkpoint: the baseline is not re-taken
    assert run_guard(resumed, narrowing[6:]) is None


def test_an_inactive_guard_never_trips() -> None:
    guard = DiversityGuard(0.0, 0.0, 3)
    assert not guard.active and run_guard(guard, steps([0.0] * 5, [0.0] * 5)) is None


def test_realism_check_trips_on_images_that_leave_the_data_while_diversity_holds() -> None:
    drifting = [h | {"frechet_to_real": f} for h, f in zip(steps([1.0] * 8, [4.0] * 8), [0.5, 0.6, 0.7, 0.9, 1.4, 2.5, 3.0, 4.0], strict=True)]
    assert run_guard(DiversityGuard(0.6, 0.15, 3), drifting) is None  # both diversity measures pass
    guard = DiversityGuard(0.6, 0.15, 3, max_frechet_ratio=3.0)
    step, reason = run_guard(guard, drifting)
    assert guard.frechet_reference == pytest.approx(0.6)
    assert step == 7 and "Frechet distance to real renders 2.30 > 3.00 x 0.60" in reason  # (1.4 + 2.5 + 3.0) / 3; steps 4-6: 1.60
