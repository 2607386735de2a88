"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``step_0000200/`` holding model.safetensors, optimizer.safetensors and
state.json. It is written under a temporary name and renamed when complete, so a kill or a full
disk mid-write never leaves a folder that looks finished; one that is corrupt anyway (a bad disk,
a hand edit) fails to load with an error naming the file, never as a silently different model.
Randomness is derived from (seed, step), so no RNG state needs saving for an exact resume.
A model's frozen input space (a VAE, the submodule ``space``) is saved with the model's own
folder, never in checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from selftok.errors import CheckpointError

STATE = "state.json"
FROZEN = "space."  # state keys of a model's frozen input space


def own_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State to save: everything except the frozen input space."""
    return {k: v.detach().contiguous() for k, v in module.state_dict().items() if not k.startswith(FROZEN)}


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Write ``folder/step_NNNNNNN`` and, once it is complete, delete all but the newest ``keep``."""
    target = folder / f"step_{step:07d}"
    scratch = folder / f".{target.name}.partial"  # not matched by step_*: never resumed from
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, str(scratch / "model.safetensors"))
    tensors, meta = _split_optimizer(optimizer.state_dict())
    save_file(tensors, str(scratch / "optimizer.safetensors"))
    (scratch / STATE).write_text(json.dumps({"step": step, "optimizer": meta, **extra}, indent=1))
    if target.exists():
        shutil.rmtree(target)
    scratch.rename(target)
    others = sorted(p for p in folder.glob("step_*") if p.is_dir() and p != target)
    for old in others[: max(0, len(others) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _step(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def latest_checkpoint(folder: Path, at_most: int | None = None) -> Path | None:
    """The newest complete checkpoint (with a step <= ``at_most`` if given), or None."""
    done = sorted(p for p in folder.glob("step_*") if (p / STATE).is_file()) if folder.is_dir() else []
    if at_most is not None:
        done = [p for p in done if _step(p) <= at_most]
    return done[-1] if done else None


def roll_back_to(path: Path, extra: dict[str, Any]) -> None:
    """Make ``path`` the newest checkpoint of its folder, with ``extra`` added to its state.json:
    newer folders go first, then state.json is replaced atomically (weights are not rewritten)."""
    for newer in path.parent.glob("step_*"):
        if newer.is_dir() and _step(newer) > _step(path):
            shutil.rmtree(newer, ignore_errors=True)
    state = json.loads((path / STATE).read_text()) | extra
    scratch = path / f"{STATE}.tmp"
    scratch.write_text(json.dumps(state, indent=1))
    os.replace(scratch, path / STATE)


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]]:
    """Restore the optimizer in place; returns (step, model state, state.json contents)."""
    state = _read(path / STATE, lambda file: json.loads(file.read_text()))
    tensors = _read(path / "optimizer.safetensors", lambda file: load_file(str(file)))
    try:
        optimizer.load_state_dict(_join_optimizer(tensors, state["optimizer"]))
    except (KeyError, ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: optimizer state does not fit this run ({error}); delete the folder to start fresh") from error
    return int(state["step"]), _read(path / "model.safetensors", lambda file: load_file(str(file))), state


def _read(file: Path, load: Any) -> Any:
    """``load(file)``, a truncated or corrupt file reported by name instead of as a parser's error."""
    try:
        return load(file)
    except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: checkpoint file is truncated or corrupt ({error}); delete {file.parent} "
                              "to resume from an earlier checkpoint or start fresh") from error


class StopSignals:
    """While active, SIGTERM and SIGINT only set ``received``: the loop finishes its step, saves a
    checkpoint and stops with an error, so a stopped stage loses no work and a rerun resumes.
    Outside the main thread (where handlers cannot be installed) it does nothing."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, number: int, _frame: Any) -> None:
        self.received = signal.Signals(number).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
