"""params.yaml sections ``data``, ``validate`` and ``tokenize``: where images come from, the data
contract they must meet, and how accepted images are turned into code shards."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from selftok.data.scenes import CATEGORIES, COLORS, SHAPES
from selftok.schema import Fraction, Positive, StrictModel

IMAGE_MODE = "RGB"  # every image is converted to this PIL mode on ingest and checked for it on validation


class ScenesSource(StrictModel):
    """The built-in GenEval-style world of coloured shapes (selftok.data.scenes)."""

    seed: int = Field(0, description="generator seed: a new value is new data (flows/retrain.py edits it)")
    n_train: Positive = Field(24000, description="captioned training scenes")
    n_val: Positive = Field(512, description="captioned val scenes (validate.val_fraction wants >= 2% of the data)")
    n_images: int = Field(0, ge=0, description="image-only scenes for the VAE, tokenizers and renderer; the VLM never reads them")
    min_objects: int = Field(1, ge=1, le=4, description="objects per scene, at least")
    max_objects: int = Field(4, ge=1, le=4, description="objects per scene, at most")
    object_size: tuple[Fraction, Fraction] = Field((0.3, 0.42), description="object size range, share of the image side")
    categories: list[Literal[CATEGORIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(CATEGORIES), description="GenEval categories the captions cover"
    )
    holdout: list[str] = Field(
        default_factory=lambda: ["red star", "blue triangle", "green diamond"],
        description="colour-shape pairs never in train images, captions, codes or RL prompts",
    )

    @model_validator(mode="after")
    def _check(self) -> ScenesSource:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        if not 0 < self.object_size[0] <= self.object_size[1] < 0.5:
            raise ValueError(f"object_size must satisfy 0 < low <= high < 0.5, got {self.object_size}")
        for pair in self.holdout:
            color, _, shape = pair.partition(" ")
            if color not in COLORS or shape not in SHAPES:
                raise ValueError(f"holdout entry {pair!r} must be '<colour> <shape>' with colour in {list(COLORS)} and shape in {list(SHAPES)}")
        return self


class FolderSource(StrictModel):
    """A folder of images; captions from sidecar .txt files, captions.jsonl or captions.csv."""

    path: Path | None = Field(None, description="e.g. data/raw: the folder of images")
    val_fraction: Fraction = Field(0.1, description="share of the images in val (a stable hash of the file path)")


class ShardsSource(StrictModel):
    """Existing webdataset shards (local paths, file://, http(s)://, s3:// via `pipe:`)."""

    train: list[str] = Field(default_factory=list, description="webdataset URLs of the training shards")
    val: list[str] = Field(default_factory=list, description="webdataset URLs of the val shards")
    images: list[str] = Field(default_factory=list, description="image-only shards for the image models (captions unused)")


class DataParams(StrictModel):
    """Where the images and captions come from, and their size."""

    source: Literal["scenes", "folder", "shards"] = Field("scenes", description="scenes | folder | shards")
    image_size: int = Field(32, ge=8, le=4096, description="square side in pixels")
    resize: Literal["center_crop", "none"] = Field("center_crop", description="center_crop | none (docs/design.md: data sources)")
    shard_size: Positive = Field(1000, description="samples per webdataset shard")
    scenes: ScenesSource = Field(ScenesSource(), description="source scenes: the built-in world")
    folder: FolderSource = Field(FolderSource(), description="source folder: images with captions")
    shards: ShardsSource = Field(ShardsSource(), description="source shards: existing webdataset shards")

    @property
    def mode(self) -> str:
        """The PIL image mode of every sample: RGB, the only one the models read."""
        return IMAGE_MODE

    @model_validator(mode="after")
    def _source_is_configured(self) -> DataParams:
        if self.source == "folder" and self.folder.path is None:
            raise ValueError("source is 'folder' but data.folder.path is not set")
        if self.source == "shards" and not (self.shards.train and self.shards.val):
            raise ValueError("source is 'shards' but data.shards.train or data.shards.val is empty")
        return self


class ValidateParams(StrictModel):
    """The data contract (great-expectations suites) and the quarantine threshold."""

    max_bad_fraction: Fraction = Field(0.01, description="fail the stage above this share of quarantined samples")
    caption_min_chars: Positive = Field(3, description="shortest caption accepted")
    caption_max_chars: Positive = Field(200, description="longest caption accepted")
    val_fraction: tuple[Fraction, Fraction] = Field((0.02, 0.5), description="allowed share of val in the captioned data")

    @model_validator(mode="after")
    def _check(self) -> ValidateParams:
        if self.caption_min_chars > self.caption_max_chars:
            raise ValueError("caption_min_chars > caption_max_chars")
        if self.val_fraction[0] > self.val_fraction[1]:
            raise ValueError(f"val_fraction range is inverted: {self.val_fraction}")
        return self


class TokenizeParams(StrictModel):
    """Re-tokenising accepted images into code shards."""

    batch_size: Positive = Field(256, description="images per encode call")
    workers: int = Field(1, ge=1, le=256, description="1: encode in this process; more: a local Dask cluster of this many processes (ingest of a folder source too)")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster to map shards on (ingest of a folder source too), e.g. tcp://host:8786")
    check_samples: Positive = Field(64, description="val samples decoded back and compared")
