"""The tokenizer arms: Selftok (the method) and the spatial-token control (issue 10).

tokenize, pretrain_vlm and rl_finetune run once per arm as DVC ``foreach`` stages
(``tokenize@selftok``, ``tokenize@spatial``, ...) with the same code; an arm says only where
its inputs and outputs live. The Selftok arm keeps the paths the pipeline always had, so
existing users, docs and commands are unaffected. dvc.yaml's ``vars.arms`` repeats these paths
for DVC (it cannot import Python); a test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from selftok.stages.base import StageContext
from selftok.tokenizer.registry import AnyTokenizer, load_tokenizer
from selftok.vlm.decode import render_fn
from selftok.vlm.scores import DecodeFn


@dataclass(frozen=True)
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
    registered_vlm: str  # MLflow registered model of this arm's VLMs (promotion is Selftok's only)

    @property
    def suffix(self) -> str:
        """Appended to the names of the arm's metrics files and report images; Selftok keeps the plain names."""
        return "" if self.name == "selftok" else f"_{self.name}"

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

    def decode_fn(self, root: Path, device: torch.device | str = "cpu") -> DecodeFn | None:
        """Codes -> images with the arm's renderer, or None while its models are missing."""
        if not all((root / folder / "config.json").is_file() for folder in self.model_folders()):
            return None
        return render_fn(self.load_tokenizer(root, with_renderer=True), device)


SELFTOK = Arm(
    "selftok", Path("models/tokenizer"), Path("models/renderer"), Path("data/codes"), Path("models/vlm"),
    Path("models/vlm_rl"), Path("checkpoints/vlm"), Path("checkpoints/rl"), "selftok-vlm",
)
SPATIAL = Arm(
    "spatial", Path("models/spatial"), None, Path("data/codes_spatial"), Path("models/vlm_spatial"),
    Path("models/vlm_rl_spatial"), Path("checkpoints/vlm_spatial"), Path("checkpoints/rl_spatial"), "selftok-spatial-vlm",
)
ARMS = {arm.name: arm for arm in (SELFTOK, SPATIAL)}


def stage_arm(ctx: StageContext) -> Arm:
    """The arm of a ``group@arm`` stage."""
    if ctx.spec.item not in ARMS:
        raise KeyError(f"stage {ctx.name!r}: no tokenizer arm {ctx.spec.item!r}; known arms: {', '.join(ARMS)}")
    return ARMS[ctx.spec.item]
