"""Typed params: the assembly of every package's section, loading, overrides and profiles.

Every section is a strict pydantic model next to the code it configures, so unknown keys, wrong
types and impossible values are rejected before any work starts, with the dotted key path and
the file in the message. The models' defaults are the default profile: params.yaml is generated
from them (``selftok profile show default``), and the other profiles in profiles/ are overlays
that hold only the keys where they differ. Stages read only their own sections; dvc.yaml lists
the same keys so DVC reruns a stage exactly when they change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from selftok.data.params import DataParams, TokenizeParams, ValidateParams
from selftok.errors import ConfigError
from selftok.eval.params import EvaluateParams, EvaluatorParams, GenevalParams
from selftok.rl.params import RLParams
from selftok.schema import Positive, StrictModel, fill_absent
from selftok.tokenizer.params import RendererParams, TokenizerParams, VaeParams
from selftok.tokenizer.spatial_params import ControlParams, shared_recipe
from selftok.vlm.params import VLMParams

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"
DEFAULT_PROFILE = "default"
DEFAULT_HEADER = (
    "The default profile: a CPU-sized run that finishes end to end on a 2-core machine.",
    "Generated from the params schema (the defaults in src/selftok/*/params.py) by `selftok profile show default`;",
    "other profiles in profiles/ hold only the keys where they differ (`selftok profile use NAME` writes one here).",
)
COMMENT_COLUMN = 28


class PipelineParams(StrictModel):
    """How Prefect runs each stage task."""

    retries: int = Field(0, ge=0, le=10, description="Prefect retries of a failed stage task")
    retry_delay_seconds: float = Field(10.0, ge=0, description="wait before a retry")
    stage_timeout_seconds: float = Field(4 * 3600.0, gt=0, description="a stage task running longer fails")


class TrackingParams(StrictModel):
    """Where MLflow records the runs."""

    experiment: str = Field("selftok", min_length=1, description="MLflow experiment name")


class ComputeParams(StrictModel):
    """The hardware a run is planned for: read only by `selftok run --dry-run` (its estimates)."""

    gpus: Positive = Field(8, description="GPUs of the data-parallel (or sharded) training run")
    gpu_memory_gb: float = Field(80.0, gt=0, description="memory of one GPU (H100: 80)")
    peak_tflops: float = Field(989.0, gt=0, description="dense bf16 peak of one GPU (H100 SXM: 989)")
    utilisation: float = Field(0.4, gt=0, le=1, description="share of the peak a training step reaches (MFU)")
    sharding: Literal["ddp", "fsdp"] = Field("fsdp", description="ddp: full replicas | fsdp: weights, grads and optimizer sharded over the GPUs")


class Params(StrictModel):
    """The whole params file: one section per package, assembled here."""

    seed: int = Field(0, description="global seed: weights, batches, noise, and the split of the prompts")
    data: DataParams = Field(DataParams(), description="where images and captions come from")
    validate_: ValidateParams = Field(ValidateParams(), alias="validate", description="the data contract")
    vae: VaeParams = Field(VaeParams(), description="the latent space the tokenizer reads (src/selftok/tokenizer/vae.py)")
    tokenizer: TokenizerParams = Field(TokenizerParams(), description="Selftok tokenizer on VAE latents (src/selftok/tokenizer)")
    renderer: RendererParams = Field(RendererParams(), description="one-step renderer on the frozen tokens")
    tokenize: TokenizeParams = Field(TokenizeParams(), description="accepted images -> code shards")
    evaluator: EvaluatorParams = Field(EvaluatorParams(), description="the scene evaluator: judge of generations and rewards")
    geneval: GenevalParams = Field(GenevalParams(), description="the prompt sets rl_train, rl_select, rl_test and compositional (disjoint requests)")
    vlm: VLMParams = Field(VLMParams(), description="the AR model over text and visual tokens (src/selftok/vlm)")
    rl: RLParams = Field(RLParams(), description="GRPO on visual tokens (src/selftok/rl); sampling recipe = vlm.sampling")
    evaluate: EvaluateParams = Field(EvaluateParams(), description="the evaluate stage and model promotion")
    control: ControlParams = Field(ControlParams(), description="spatial-token control arm: same recipe, other tokens")
    pipeline: PipelineParams = Field(PipelineParams(), description="how Prefect runs the stages")
    tracking: TrackingParams = Field(TrackingParams(), description="MLflow")
    compute: ComputeParams | None = Field(None, description="hardware of a planned run (`selftok run --dry-run`; absent: one CPU)")

    @model_validator(mode="before")
    @classmethod
    def _control_follows_selftok(cls, data: Any) -> Any:
        """The control's recipe keys it leaves out come from this file's tokenizer and renderer."""
        if not isinstance(data, dict) or not isinstance(control := data.get("control", {}), dict):
            return data
        if not isinstance(spatial := control.get("spatial", {}), dict):
            return data
        try:
            recipe = shared_recipe(TokenizerParams.model_validate(data.get("tokenizer", {})),
                                   RendererParams.model_validate(data.get("renderer", {})))
        except ValidationError:  # those sections report their own errors
            return data
        return {**data, "control": {**control, "spatial": fill_absent(spatial, recipe)}}

    @model_validator(mode="after")
    def _same_bits_per_image(self) -> Params:
        """The control is only a control with Selftok's K and codebook (K x log2 C bits per image)."""
        spatial, selftok = self.control.spatial, self.tokenizer
        for key in ("num_tokens", "codebook_size"):
            if getattr(spatial, key) != getattr(selftok, key):
                raise ValueError(f"control.spatial.{key} ({getattr(spatial, key)}) must equal tokenizer.{key} "
                                 f"({getattr(selftok, key)}): both arms code an image in the same number of bits")
        return self

    @model_validator(mode="after")
    def _shapes_fit(self) -> Params:
        """The image must divide into VAE latents, and the latent grid into the tokenizer's patches."""
        size, factor = self.data.image_size, self.vae.downsampling()
        if factor is None:  # a pretrained VAE without `expected`: checked when it is loaded
            return self
        if size % factor:
            source = "vae.expected.block_out_channels" if self.vae.pretrained else "vae.block_out_channels"
            raise ValueError(f"data.image_size {size} is not divisible by the VAE's downsampling {factor} ({source})")
        for key in ("encoder_patch", "decoder_patch"):
            if (patch := getattr(self.tokenizer, key)) and (size // factor) % patch:
                raise ValueError(f"tokenizer.{key} {patch} does not divide the {size // factor}x{size // factor} latent grid "
                                 f"(data.image_size {size} / VAE downsampling {factor})")
        return self

    def section(self, key: str) -> Any:
        """The params section under a top-level key as plain data (for logging and hashing)."""
        return self.model_dump(mode="json", by_alias=True)[key]


# --- loading -------------------------------------------------------------------------------------
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
    """A params file, or a profile overlay (the keys it leaves out are the defaults either way)."""
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


# --- profiles ------------------------------------------------------------------------------------
def _fields(model: type[BaseModel]) -> Iterator[tuple[str, str]]:
    """(attribute, key in the file) of a section, its own fields first, then its bases', each in
    declaration order: the order params.yaml shows them in."""
    seen: set[str] = set()
    for klass in model.__mro__:
        for name in getattr(klass, "__annotations__", {}):
            if name in model.model_fields and name not in seen:
                seen.add(name)
                yield name, model.model_fields[name].alias or name


def schema_data(model: BaseModel) -> dict[str, Any]:
    """A validated section as file data, without the optional keys whose schema default is None
    (preset overrides, derived intervals, the control's shared recipe): absent means default."""
    plain = model.model_dump(mode="json", by_alias=True)
    out: dict[str, Any] = {}
    for name, key in _fields(type(model)):
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out[key] = schema_data(value)
        elif type(model).model_fields[name].default is not None:
            out[key] = plain[key]
    return out


def default_profile() -> dict[str, Any]:
    """The default profile as file data: the schema's defaults."""
    return schema_data(Params())


def profile_names(root: Path) -> list[str]:
    return [DEFAULT_PROFILE, *sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml") if p.stem != DEFAULT_PROFILE)]


def profile_path(root: Path, name: str) -> Path:
    """The overlay file of a profile (the default profile has none: it is the schema)."""
    path = root / PROFILES_DIR / f"{name}.yaml"
    if name == DEFAULT_PROFILE or not path.is_file():
        raise ConfigError(f"no profile overlay {name!r} in {root / PROFILES_DIR}; known profiles: {', '.join(profile_names(root))}")
    return path


def profile_data(root: Path, name: str) -> dict[str, Any]:
    """A profile as file data: the default with the profile's overlay merged in, validated (an
    unknown or mistyped key names itself and the overlay file)."""
    if name == DEFAULT_PROFILE:
        return default_profile()
    path = profile_path(root, name)
    overlay = read_params(path)
    if not isinstance(overlay, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(overlay).__name__}")
    data = merged(default_profile(), overlay)
    parse_params(data, str(path))
    return data


def profile_header(root: Path, name: str) -> list[str]:
    """The comment lines a profile starts with: the default's, or its overlay's own first comments."""
    if name == DEFAULT_PROFILE:
        return list(DEFAULT_HEADER)
    lines = profile_path(root, name).read_text().splitlines()
    own = [line.lstrip("#").strip() for line in lines[: next((i for i, x in enumerate(lines) if not x.startswith("#")), len(lines))]]
    return [*own, f"Generated by `selftok profile show {name}`: profiles/{name}.yaml over the default profile."]


def profile_yaml(root: Path, name: str) -> str:
    """A profile as a full params file: every key, each with its schema description as a comment."""
    data = profile_data(root, name)
    header = [f"# {line}" if line else "#" for line in profile_header(root, name)]
    return "\n".join([*header, *render_section(parse_params(data), data, 0)]) + "\n"


def render_section(model: BaseModel, data: Mapping[str, Any], depth: int) -> list[str]:
    """YAML lines of ``data`` (a section's file data) in schema order, scalars before subsections,
    a blank line between top-level sections; each key's description is its comment."""
    fields = [(name, key) for name, key in _fields(type(model)) if key in data]
    scalars = [(n, k) for n, k in fields if not isinstance(getattr(model, n), BaseModel)]
    sections = [(n, k) for n, k in fields if isinstance(getattr(model, n), BaseModel)]
    indent = "  " * depth
    lines = [_line(f"{indent}{key}: {_flow(data[key])}", _description(model, name)) for name, key in scalars]
    for name, key in sections:
        if depth == 0:
            lines.append("")
        if description := _description(model, name):  # above the key: a section line stays `key:` alone
            lines.append(f"{indent}# {description}")
        lines += [f"{indent}{key}:", *render_section(getattr(model, name), data[key], depth + 1)]
    return lines


def _description(model: BaseModel, name: str) -> str:
    return type(model).model_fields[name].description or ""


def _line(text: str, comment: str) -> str:
    return f"{text:<{COMMENT_COLUMN - 1}} # {comment}" if comment else text


def _flow(value: Any) -> str:
    """One value in YAML flow style (lists inline)."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n").removesuffix("\n...")
