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


def _register(root: Path, name: str, model: str, companions: bool = True) -> Path:
    """A model folder of its own bytes, registered as a new version of ``model`` (with a tokenizer companion)."""
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "selftok-tokenizer", "weights": "{name}"}}')
    tokenizer = root / "tokenizer"
    tokenizer.mkdir(exist_ok=True)
    (tokenizer / "config.json").write_text('{"model_type": "selftok-tokenizer"}')
    with mlflow.start_run():
        tracking.log_model_dir(folder, model, {"tokenizer": tokenizer} if companions else None)
    return folder


def _generation(overall: float) -> dict[str, dict[str, float]]:
    return {"rl": {"overall": overall, "overall_se": 0.01, "overall_strict": 0.3},
            "pretrained": {"overall": 0.2, "overall_se": 0.01, "overall_strict": 0.3}}


def test_a_champion_of_another_benchmark_is_rescored_then_the_rule_decides(tmp_path: Path) -> None:
    """New data changes the benchmark: the champion is re-scored on the new one (recorded on its
    version), the usual rule decides, and a later round on the same benchmark reads the record."""
    tracking.configure(tmp_path, "promotion")
    name, calls = "selftok-test-rescore", []

    def rescore(version: str) -> dict[str, float]:
        calls.append(version)
        return {"overall": 0.3, "overall_se": 0.02}

    assert promotion.promote(name, _register(tmp_path, "a", name), _generation(0.4), "bench-1", 0.02, 2.0, rescore).promote
    assert calls == []  # no champion yet: nothing to re-score
    better = promotion.promote(name, _register(tmp_path, "b", name), _generation(0.6), "bench-2", 0.02, 2.0, rescore)
    assert calls == ["1"] and better.promote and better.champion_rescored
    assert better.champion_score == 0.3 and better.required_gain == pytest.approx(max(0.02, 2 * promotion.gain_se(0.01, 0.02)))
    tags = mlflow.tracking.MlflowClient().get_model_version(name, "1").tags
    assert (tags["benchmark.hash"], tags["benchmark.overall"], tags["benchmark.overall_se"]) == ("bench-2", "0.3", "0.02")
    assert tags["benchmark.rescored"] == "true"
    assert mlflow.tracking.MlflowClient().get_model_version(name, "2").tags["promotion.champion_rescored"] == "True"

    same = promotion.promote(name, _register(tmp_path, "c", name), _generation(0.61), "bench-2", 0.02, 2.0, rescore)
    assert calls == ["1"] and not same.champion_rescored  # the champion (v2) was scored on bench-2
    assert not same.promote and same.champion_score == 0.6 and tracking.alias_version(name, tracking.CHAMPION) == "2"


def test_a_champion_that_cannot_be_loaded_is_kept_with_the_reason(tmp_path: Path) -> None:
    tracking.configure(tmp_path, "promotion")
    name = "selftok-test-unloadable"

    def missing(version: str) -> dict[str, float]:
        raise LookupError(f"models:/{name}/{version}: logged without its tokenizer")

    promotion.promote(name, _register(tmp_path, "a", name), _generation(0.4), "bench-1", 0.02, 2.0, missing)
    kept = promotion.promote(name, _register(tmp_path, "b", name), _generation(0.9), "bench-2", 0.02, 2.0, missing)
    assert not kept.promote and not kept.champion_rescored and kept.champion_score is None
    assert "another benchmark and it could not be re-scored: models:/selftok-test-unloadable/1" in kept.reason
    assert tracking.alias_version(name, tracking.CHAMPION) == "1"
    assert "benchmark.rescored" not in mlflow.tracking.MlflowClient().get_model_version(name, "1").tags


def test_version_folders_are_the_logged_weights_and_companions(tmp_path: Path) -> None:
    tracking.configure(tmp_path, "promotion")
    name = "selftok-test-folders"
    _register(tmp_path, "a", name)
    folders = promotion.version_folders(name, "1", tmp_path / "download")
    assert set(folders) == {"weights", "tokenizer"} and '"weights": "a"' in (folders["weights"] / "config.json").read_text()
    _register(tmp_path, "b", name, companions=False)
    with pytest.raises(LookupError, match="logged without its tokenizer"):
        promotion.version_folders(name, "2", tmp_path / "download2")
    with pytest.raises(LookupError, match="cannot be read from the store"):
        promotion.version_folders(name, "9", tmp_path / "download3")
