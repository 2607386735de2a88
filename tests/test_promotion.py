from pathlib import Path

import mlflow
import pytest

from selftok import promotion, tracking


@pytest.mark.parametrize(
    ("challenger", "champion", "promote"),
    [(0.8, None, True), (0.8, 0.7, True), (0.71, 0.7, False), (0.7, 0.7, False), (0.6, 0.7, False)],
    ids=["no-champion", "better", "better-within-margin", "equal", "worse"],
)
def test_decide(challenger: float, champion: float | None, promote: bool) -> None:
    decision = promotion.decide(challenger, champion, margin=0.02)
    assert decision.promote is promote
    assert decision.challenger_score == challenger and decision.champion_score == champion


def test_equal_scores_never_promote_even_with_zero_margin() -> None:
    assert not promotion.decide(0.5, 0.5, margin=0.0).promote
    assert promotion.decide(0.51, 0.5, margin=0.0).promote


def test_a_gain_inside_the_benchmark_noise_does_not_promote() -> None:
    """0.03 clears the 0.02 margin but not 2 standard errors of 0.024 (two draws of +-0.017)."""
    se = promotion.gain_se(0.017, 0.017)
    assert se == pytest.approx(0.02404, abs=1e-5)
    noisy = promotion.decide(0.18, 0.15, margin=0.02, se=se, sigmas=2.0)
    assert not noisy.promote and noisy.required_gain == pytest.approx(2 * se)
    assert "below 0.0481 (margin 0.02, 2 x its standard error 0.0240)" in noisy.reason
    clear = promotion.decide(0.20, 0.15, margin=0.02, se=se, sigmas=2.0)
    assert clear.promote and "needs 0.0481" in clear.reason
    assert promotion.decide(0.18, 0.15, margin=0.02, se=se, sigmas=0.0).promote  # sigmas 0: the margin alone
    assert promotion.decide(0.18, 0.15, margin=0.02, se=0.001, sigmas=2.0).required_gain == 0.02  # margin dominates


def test_a_champion_without_a_recorded_error_counts_as_noisy_as_the_challenger() -> None:
    assert promotion.gain_se(0.02, None) == pytest.approx(0.02 * 2**0.5)
    assert promotion.gain_se(0.03, 0.04) == pytest.approx(0.05)


def test_a_gain_that_loses_the_strict_score_is_refused() -> None:
    pretrained = {"overall": 0.15, "overall_strict": 0.14}
    hacked = promotion.refuse_hack({"overall": 0.37, "overall_strict": 0.0}, pretrained, 0.2, margin=0.02)
    assert hacked is not None and not hacked.promote and "strict score 0.0000 is 0.1400 below" in hacked.reason
    assert (hacked.challenger_score, hacked.champion_score) == (0.37, 0.2)
    assert promotion.refuse_hack({"overall": 0.2, "overall_strict": 0.13}, pretrained, None, margin=0.02) is None  # within margin


def test_aliases_follow_decisions(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "selftok-tokenizer"}')
    tracking.configure(tmp_path, "promotion")
    name = "selftok-test-model"

    def new_version() -> str:
        with mlflow.start_run():
            return tracking.log_model_dir(tmp_path / "m", name)

    v1 = new_version()
    promotion.apply(name, v1, promotion.decide(0.6, None, 0.01))
    assert tracking.alias_version(name, "champion") == v1 == tracking.alias_version(name, "challenger")

    v2 = new_version()
    previous = promotion.apply(name, v2, promotion.decide(0.55, 0.6, 0.01))
    assert previous == v1
    assert tracking.alias_version(name, "champion") == v1 and tracking.alias_version(name, "challenger") == v2

    v3 = new_version()
    promotion.apply(name, v3, promotion.decide(0.7, 0.6, 0.01))
    assert tracking.alias_version(name, "champion") == v3
    tags = mlflow.tracking.MlflowClient().get_model_version(name, v3).tags
    assert tags["promotion.promote"] == "True" and tags["promotion.champion_score"] == "0.6"
    assert tags["promotion.required_gain"] == "0.01"
