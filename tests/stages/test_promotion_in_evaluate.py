"""What the evaluate stage does with its RL model: promotion.promote against the registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from selftok import promotion, tracking

NAME = "selftok-test-vlm"


def _register(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"model_type": "selftok-tokenizer", "weights": "{name}"}}')  # other bytes: other hash
    with mlflow.start_run():
        tracking.log_model_dir(folder, NAME)
    return folder


def _generation(overall: float, strict: float = 0.3) -> dict[str, dict[str, float]]:
    return {"rl": {"overall": overall, "overall_se": 0.01, "overall_strict": strict},
            "pretrained": {"overall": 0.2, "overall_se": 0.01, "overall_strict": 0.3}}


def test_promote_compares_on_one_benchmark_and_refuses_hacks(tmp_path: Path) -> None:
    tracking.configure(tmp_path, "promotion")
    first = promotion.promote(NAME, _register(tmp_path, "a"), _generation(0.4), "bench-1", margin=0.02, sigmas=2.0)
    assert first.promote and first.reason == "no champion yet"
    tags = MlflowClient().get_model_version(NAME, "1").tags
    assert (tags["benchmark.hash"], tags["benchmark.overall"], tags["benchmark.overall_se"]) == ("bench-1", "0.4", "0.01")

    worse = promotion.promote(NAME, _register(tmp_path, "b"), _generation(0.41), "bench-1", margin=0.02, sigmas=2.0)
    assert not worse.promote and worse.champion_score == 0.4 and worse.required_gain is not None
    assert tracking.alias_version(NAME, tracking.CHAMPION) == "1" and tracking.alias_version(NAME, tracking.CHALLENGER) == "2"

    other = promotion.promote(NAME, _register(tmp_path, "c"), _generation(0.9), "bench-2", margin=0.02, sigmas=2.0)
    assert not other.promote and "another benchmark" in other.reason

    hack = promotion.promote(NAME, _register(tmp_path, "d"), _generation(0.9, strict=0.0), "bench-1", margin=0.02, sigmas=2.0)
    assert not hack.promote and "objects nobody asked for" in hack.reason

    better = promotion.promote(NAME, _register(tmp_path, "e"), _generation(0.6), "bench-1", margin=0.02, sigmas=2.0)
    assert better.promote and tracking.alias_version(NAME, tracking.CHAMPION) == "5"
