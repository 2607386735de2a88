"""Typed params: params.yaml is the single source of configuration.

Every section is a strict pydantic model, so unknown keys, wrong types and impossible values
are rejected before any work starts, with the dotted key path in the message. Stages read only
their own sections; dvc.yaml lists the same keys so DVC reruns a stage exactly when they change.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from selftok.data.scenes import CATEGORIES, COLORS, SHAPES
from selftok.errors import ConfigError
from selftok.eval.params import EvaluatorParams, GenevalParams
from selftok.rl.params import RLParams
from selftok.schema import StrictModel
from selftok.tokenizer.params import RendererParams, TokenizerParams, VaeParams
from selftok.tokenizer.spatial_params import SpatialParams
from selftok.vlm.params import VLMParams

PARAMS_FILE = "params.yaml"
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class ScenesSource(StrictModel):
    seed: int = 0  # generator seed: a new value is new data (see flows/retrain.py)
    n_train: int = Field(4000, ge=1)
    n_val: int = Field(256, ge=1)
    n_images: int = Field(0, ge=0)  # image-only scenes for the image models, drawn from every colour-shape pair
    min_objects: int = Field(1, ge=1, le=4)
    max_objects: int = Field(4, ge=1, le=4)
    object_size: tuple[Fraction, Fraction] = (0.3, 0.42)
    categories: list[Literal[CATEGORIES]] = Field(default_factory=lambda: list(CATEGORIES))  # type: ignore[valid-type]
    holdout: list[str] = Field(default_factory=lambda: ["red star", "blue triangle", "green diamond"])

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

    path: Path | None = None
    val_fraction: Fraction = 0.1


class ShardsSource(StrictModel):
    """Existing webdataset shards (local paths, file://, http(s)://, s3:// via `pipe:`)."""

    train: list[str] = Field(default_factory=list)
    val: list[str] = Field(default_factory=list)
    images: list[str] = Field(default_factory=list)  # image-only: read by the image models, never by the VLM


class DataParams(StrictModel):
    source: Literal["scenes", "folder", "shards"] = "scenes"
    image_size: int = Field(32, ge=8, le=4096)
    mode: Literal["RGB"] = "RGB"
    resize: Literal["center_crop", "none"] = "center_crop"
    shard_size: int = Field(1000, ge=1)
    scenes: ScenesSource = ScenesSource()
    folder: FolderSource = FolderSource()
    shards: ShardsSource = ShardsSource()

    @model_validator(mode="after")
    def _source_is_configured(self) -> DataParams:
        if self.source == "folder" and self.folder.path is None:
            raise ValueError("source is 'folder' but data.folder.path is not set")
        if self.source == "shards" and not (self.shards.train and self.shards.val):
            raise ValueError("source is 'shards' but data.shards.train or data.shards.val is empty")
        return self


class ValidateParams(StrictModel):
    max_bad_fraction: Fraction = 0.01
    caption_min_chars: int = Field(3, ge=1)
    caption_max_chars: int = Field(200, ge=1)
    val_fraction: tuple[Fraction, Fraction] = (0.02, 0.5)

    @model_validator(mode="after")
    def _check(self) -> ValidateParams:
        if self.caption_min_chars > self.caption_max_chars:
            raise ValueError("caption_min_chars > caption_max_chars")
        if self.val_fraction[0] > self.val_fraction[1]:
            raise ValueError(f"val_fraction range is inverted: {self.val_fraction}")
        return self


class TokenizeParams(StrictModel):
    """Re-tokenising accepted images into code shards."""

    batch_size: int = Field(256, ge=1)
    workers: int = Field(1, ge=1, le=256)  # processes mapping over shards
    check_samples: int = Field(64, ge=1)  # val samples decoded back and compared


class EvaluateParams(StrictModel):
    """The evaluate stage: how much val data, decode steps, benchmark sample count, and the promotion margin."""

    val_images: int = Field(128, ge=8)
    decode_steps: int = Field(20, ge=1)  # Euler steps of diffusion decodes in the reconstruction table
    # Images per held-out prompt in the GenEval-style benchmark (None: vlm.sampling's). Some
    # categories have 2 held-out prompts, so 4 samples leave a score resting on 8 images.
    samples_per_prompt: int | None = Field(None, ge=1)
    promotion_margin: Fraction = 0.02  # new model must beat the champion's overall score by this much
    # ... and by this many standard errors of the gain (both scores' sampling noise; 0: the margin alone)
    promotion_sigmas: float = Field(2.0, ge=0)


class ControlParams(StrictModel):
    """The spatial-token control arm (issue 10): its tokenizer. Re-tokenisation, VLM, RL and
    evaluation run with the Selftok arm's own sections, so the two arms differ only in tokens."""

    spatial: SpatialParams = SpatialParams()


class PipelineParams(StrictModel):
    """How Prefect runs each stage task."""

    retries: int = Field(0, ge=0, le=10)
    retry_delay_seconds: float = Field(10.0, ge=0)
    stage_timeout_seconds: float = Field(4 * 3600.0, gt=0)


class TrackingParams(StrictModel):
    experiment: str = Field("selftok", min_length=1)


class Params(StrictModel):
    seed: int = 0
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    vae: VaeParams = VaeParams()
    tokenizer: TokenizerParams = TokenizerParams()
    renderer: RendererParams = RendererParams()
    tokenize: TokenizeParams = TokenizeParams()
    vlm: VLMParams = VLMParams()
    evaluator: EvaluatorParams = EvaluatorParams()
    geneval: GenevalParams = GenevalParams()
    rl: RLParams = RLParams()
    evaluate: EvaluateParams = EvaluateParams()
    control: ControlParams = ControlParams()
    pipeline: PipelineParams = PipelineParams()
    tracking: TrackingParams = TrackingParams()

    @model_validator(mode="after")
    def _same_bits_per_image(self) -> Params:
        """The control is only a control with Selftok's K and codebook (K x log2 C bits per image)."""
        spatial, selftok = self.control.spatial, self.tokenizer
        for key in ("num_tokens", "codebook_size"):
            if getattr(spatial, key) != getattr(selftok, key):
                raise ValueError(f"control.spatial.{key} ({getattr(spatial, key)}) must equal tokenizer.{key} "
                                 f"({getattr(selftok, key)}): both arms code an image in the same number of bits")
        return self

    def section(self, key: str) -> Any:
        """The params section under a top-level key as plain data (for logging and hashing)."""
        return self.model_dump(mode="json", by_alias=True)[key]


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid value(s)"]
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        # A section-level check's input is the whole section (or file): its message names the values.
        quiet = item["type"] == "missing" or isinstance(item.get("input"), dict)
        got = "" if quiet else f" (got {item.get('input')!r})"
        lines.append(f"  {key}: {item['msg']}{got}")
    return "\n".join(lines)


def parse_params(raw: Any, source: str = PARAMS_FILE) -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def read_params(path: Path | str = PARAMS_FILE) -> Any:
    """A params file as plain data, not yet validated (for overrides to be merged into)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the project root, or pass --params)")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    return parse_params(read_params(path), str(path))


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` overrides as nested data: VALUE is YAML, dots in KEY name sections."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "" in key.split("."):  # also catches an empty key
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. rl.group_size=24")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} was already given a value")
        node[leaf] = _yaml_value(value)
    return out


def _yaml_value(text: str) -> Any:
    """A YAML scalar, with 1e-2 read as the float it means (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", text.strip()):
        return float(text)
    return value


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        old = out.get(key)
        out[key] = merged(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return out


def params_hash(data: Any) -> str:
    """Stable short hash of plain data (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
