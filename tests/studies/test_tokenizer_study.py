"""`selftok study tokenizer`'s fixed val scenes: drawn once, cached, the same whatever the project."""

from pathlib import Path

import pytest

from selftok.errors import ConfigError
from selftok.studies.tokenizer import scenes, score


def test_val_scenes_are_cached_and_fixed(tmp_path: Path) -> None:
    first = scenes("val", 4, 16, tmp_path)
    assert first.shape == (4, 3, 16, 16) and str(first.dtype) == "torch.uint8"
    assert (tmp_path / "scenes_val_4_16.npy").is_file()
    assert (scenes("val", 4, 16, tmp_path) == first).all()
    assert not (scenes("train", 4, 16, tmp_path / "other") == first).all()


def test_no_val_images_is_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--val-images must be at least 1"):
        score(tmp_path, 0, tmp_path)
