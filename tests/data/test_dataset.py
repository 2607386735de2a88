"""load_split: accepted samples of one split or several, in manifest order."""

from __future__ import annotations

from pathlib import Path

import pytest
from shard_fixtures import SIZE, scene_sample, write_project

from selftok.data.dataset import ACCEPTED_MANIFEST, IMAGE_TRAINING, load_split


@pytest.fixture
def root(tmp_path: Path) -> Path:
    splits = {split: [scene_sample(split, i) for i in range(n)] for split, n in (("train", 5), ("val", 2), ("images", 3))}
    manifest = write_project(tmp_path, splits)
    (tmp_path / ACCEPTED_MANIFEST).parent.mkdir(parents=True)
    manifest[manifest["key"] != "train-0000004"].to_parquet(tmp_path / ACCEPTED_MANIFEST, index=False)  # one quarantined
    return tmp_path


def test_image_training_reads_train_and_the_image_only_split(root: Path) -> None:
    both = load_split(root, IMAGE_TRAINING)
    assert both.keys == [f"images-{i:07d}" for i in range(3)] + [f"train-{i:07d}" for i in range(4)]
    assert both.images.shape == (7, 3, SIZE, SIZE)
    train = load_split(root, "train")
    assert train.keys == both.keys[3:] and (train.images == both.images[3:]).all()
    assert load_split(root, "val", limit=1).keys == ["val-0000000"]


def test_an_empty_split_is_named(root: Path) -> None:
    with pytest.raises(ValueError, match=r"no accepted samples in split 'eval'"):
        load_split(root, "eval")
