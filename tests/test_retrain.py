from pathlib import Path

import pytest

from flows.retrain import set_scene_seed
from selftok.config import load_params, profile_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_set_scene_seed_edits_one_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    original = profile_yaml(ROOT, "smoke")
    params.write_text(original)
    assert set_scene_seed(params, 41) == 0
    assert load_params(params).data.scenes.seed == 41
    assert load_params(params).seed == 0  # the training seed is another key
    changed = [(a, b) for a, b in zip(original.splitlines(), params.read_text().splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and "41" in changed[0][1]


def test_set_scene_seed_without_the_key_fails_clearly(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(profile_yaml(ROOT, "smoke").replace("    seed: 0  ", "    # no seed  "))
    with pytest.raises(ValueError, match=r"no data\.scenes\.seed line"):
        set_scene_seed(params, 3)
