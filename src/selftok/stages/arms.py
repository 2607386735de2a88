"""The tokenizer arms: Selftok (the method) and the spatial-token control.

tokenize, pretrain_vlm and rl_finetune run once per arm as DVC ``foreach`` stages
(``tokenize@selftok``, ``tokenize@spatial``, ...) with the same code; an arm says only where
its inputs and outputs live. Its paths are ``selftok.paths.ARMS``, which dvc.yaml reads too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selftok import paths
from selftok.stages.base import StageContext
from selftok.tokenizer.registry import AnyTokenizer, load_tokenizer


@dataclass(frozen=True, kw_only=True)
class Arm:
    """Where one arm's models, codes and checkpoints live (paths relative to the project root)."""

    name: str
    tokenizer: Path
    renderer: Path | None  # None: the tokenizer's own decoder renders (spatial)
    codes: Path
    vlm: Path
    vlm_rl: Path
    vlm_checkpoints: Path
    rl_checkpoints: Path
    suffix: str  # appended to the names of the arm's metrics files and report images

    @classmethod
    def from_paths(cls, name: str, folders: dict[str, str]) -> Arm:
        """The arm ``name`` of ``selftok.paths.ARMS``."""
        fields = {key: Path(value) for key, value in folders.items() if key not in ("renderer", "suffix")}
        renderer = None if folders["renderer"] == folders["tokenizer"] else Path(folders["renderer"])
        return cls(name=name, renderer=renderer, suffix=folders["suffix"], **fields)

    @property
    def registered_vlm(self) -> str:
        """MLflow registered model of this arm's VLMs (promotion is Selftok's only)."""
        return "selftok-vlm" if self.name == "selftok" else f"selftok-{self.name}-vlm"

    def model_folders(self) -> tuple[Path, ...]:
        return (self.tokenizer,) if self.renderer is None else (self.tokenizer, self.renderer)

    def load_tokenizer(self, root: Path, with_renderer: bool = False) -> AnyTokenizer:
        """The arm's tokenizer (with its renderer when asked), failing by name when not trained yet."""
        folders = self.model_folders() if with_renderer else (self.tokenizer,)
        for folder in folders:
            if not (root / folder / "config.json").is_file():
                raise FileNotFoundError(f"{root / folder}: no trained model; run the stage that makes it first")
        renderer = root / self.renderer if with_renderer and self.renderer is not None else None
        return load_tokenizer(root / self.tokenizer, renderer=renderer)

    def can_render(self, root: Path) -> bool:
        """Whether the tokenizer and its renderer are trained (codes can become images)."""
        return all((root / folder / "config.json").is_file() for folder in self.model_folders())


ARMS = {name: Arm.from_paths(name, folders) for name, folders in paths.ARMS.items()}
SELFTOK, SPATIAL = ARMS["selftok"], ARMS["spatial"]


def stage_arm(ctx: StageContext) -> Arm:
    """The arm of a ``group@arm`` stage."""
    if ctx.spec.item not in ARMS:
        raise KeyError(f"stage {ctx.name!r}: no tokenizer arm {ctx.spec.item!r}; known arms: {', '.join(ARMS)}")
    return ARMS[ctx.spec.item]


def serving_models(ctx: StageContext, arm: Arm) -> dict[str, Path | None]:
    """The folders a registered VLM of the arm is logged with to serve on its own: the tokenizer
    that makes and reads its codes, and the renderer (None for spatial, which renders itself, and
    for a model not trained yet: the version is then registered without them, not servable)."""
    folders = {"tokenizer": arm.tokenizer, "renderer": arm.renderer}
    return {name: ctx.path(f) if f is not None and ctx.path(f / "config.json").is_file() else None for name, f in folders.items()}
