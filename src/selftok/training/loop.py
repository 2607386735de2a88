"""The project's training loop, on accelerate: one loop for every model that trains by steps.

The same code runs in one CPU process and data-parallel under ``accelerate launch``: every rank
takes its slice of a global batch whose indices and noise derive from (seed, step, rank) only,
so a resumed run replays exactly what an uninterrupted one would have done. What is trained and
how one step uses it is a ``Task``; the loop owns the optimizer, lr schedule, checkpoints and logs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch import nn

from selftok.errors import Interrupted
from selftok.progress import Progress
from selftok.schema import LRDecay
from selftok.training.checkpoint import FROZEN, StopSignals, latest_checkpoint, load_checkpoint, own_state, save_checkpoint
from selftok.training.params import LoopParams
from selftok.training.precision import apply_tf32
from selftok.training.schedules import lr_factor

log = logging.getLogger(__name__)

LogFn = Callable[[int, dict[str, float]], None]
EvalFn = Callable[[int], None]


@dataclass
class Callbacks:
    """Hooks for the stage: metrics every log interval, images/evaluation every eval interval (main process only)."""

    on_log: LogFn | None = None
    on_eval: EvalFn | None = None


@dataclass(kw_only=True)
class LoopConfig:
    steps: int
    batch_size: int
    lr_decay: LRDecay
    warmup_steps: int
    grad_clip: float
    checkpoint_every: int
    log_every: int
    eval_every: int
    seed: int

    @classmethod
    def from_params(cls, params: LoopParams, seed: int) -> LoopConfig:
        """The loop fields of any training params section (a LoopParams) by name."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "seed"]
        return cls(**{name: getattr(params, name) for name in names}, seed=seed)


@dataclass(kw_only=True)
class TrainResult:
    steps: int
    resumed_from: int
    seconds: float
    steps_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """What a stage reports of the run."""
        return {"steps": self.steps, "resumed_from": self.resumed_from, "seconds": self.seconds, "steps_per_s": self.steps_per_s}


class Task(Protocol):
    """What a loop trains: a module for accelerate to wrap and how one step uses it."""

    module: nn.Module

    def param_groups(self, lr: float) -> list[dict[str, Any]]: ...

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]: ...

    def after_step(self, aux: Any, generator: torch.Generator) -> dict[str, float]: ...


def make_accelerator(params: LoopParams | None = None) -> Accelerator:
    """CPU (gloo when launched with several processes) unless a GPU is present. On a GPU the
    section's ``mixed_precision`` (absent: bf16) autocasts and ``tf32`` sets TF32 matmuls; on a
    CPU both are no-ops, so a CPU run's numbers never depend on them."""
    gpu = torch.cuda.is_available()
    precision = (params.mixed_precision if params is not None else None) or "bf16"
    apply_tf32(params.tf32 if params is not None else None)
    return Accelerator(cpu=not gpu, mixed_precision=precision if gpu else "no")


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of the global batch of ``step``: epochs are seeded permutations."""
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} samples)")
    per_epoch = n // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return perm[offset * batch_size : (offset + 1) * batch_size][rank::world]


def make_optimizer(task: Task, lr: float) -> torch.optim.Optimizer:
    """AdamW over the task's groups, each remembering its base lr for the schedule."""
    groups = task.param_groups(lr)
    for group in groups:
        group["base_lr"] = group["lr"]
    return torch.optim.AdamW(groups, betas=(0.9, 0.99), weight_decay=0.0)


def _resume(task: Task, optimizer: torch.optim.Optimizer, checkpoints: Path) -> int:
    """Load the newest checkpoint into the task's module and the optimizer; returns its step (0: none)."""
    found = latest_checkpoint(checkpoints)
    if found is None:
        return 0
    start, state, _ = load_checkpoint(found, optimizer)
    log.info("resuming from %s (step %d)", found, start)
    missing, unexpected = task.module.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(FROZEN) for k in missing):
        raise RuntimeError(f"{found}: checkpoint does not match the model ({missing[:3]}, {unexpected[:3]})")
    return start


def train_step(
    task: Task, wrapped: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator, grad_clip: float,
    index: torch.Tensor, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """One optimizer step on one batch: (loss, gradient norm, the task's logs)."""
    wrapped.train()
    loss, aux = task.loss(wrapped, index, generator)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), grad_clip)
    optimizer.step()
    return loss, grad_norm, task.after_step(aux, generator)


def _due(done: int, every: int, total: int) -> bool:
    return done % every == 0 or done == total


def run_loop(
    task: Task,
    n_samples: int,
    lr: float,
    loop: LoopConfig,
    checkpoints: Path,
    accelerator: Accelerator,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train ``task`` to ``loop.steps``, resuming from the newest checkpoint in ``checkpoints``."""
    callbacks = callbacks or Callbacks()
    optimizer = make_optimizer(task, lr)
    start = _resume(task, optimizer, checkpoints)
    wrapped, optimizer = accelerator.prepare(task.module, optimizer)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    bar = Progress(loop.steps, "train", initial=start, enabled=accelerator.is_main_process)
    with StopSignals() as stop:
        _train_steps(task, wrapped, optimizer, accelerator, loop, n_samples, checkpoints, callbacks, history, start, bar, stop)
    bar.close()
    seconds = time.perf_counter() - started
    return TrainResult(steps=loop.steps, resumed_from=start, seconds=seconds, steps_per_s=(loop.steps - start) / max(seconds, 1e-9),
                       history=history)


def _train_steps(
    task: Task, wrapped: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Accelerator, loop: LoopConfig, n_samples: int,
    checkpoints: Path, callbacks: Callbacks, history: list[dict[str, float]], start: int, bar: Progress, stop: StopSignals,
) -> None:
    """Steps ``start`` to ``loop.steps``; a stop signal ends them after a checkpoint of the step done."""
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start, loop.steps):
        factor = lr_factor(step, loop.steps, loop.warmup_steps, loop.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        index = batch_indices(n_samples, loop.batch_size, step, loop.seed, rank, world)
        loss, grad_norm, logs = train_step(task, wrapped, optimizer, accelerator, loop.grad_clip, index, step_generator(loop.seed, step, rank))
        window_steps += 1
        bar.update(1)
        done = step + 1
        if _due(done, loop.log_every, loop.steps):
            now = time.perf_counter()
            logs |= {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"],
                     "steps_per_s": window_steps / max(now - window_start, 1e-9)}
            window_start, window_steps = now, 0
            logs = {k: v for k, v in logs.items() if v is not None}
            history.append({"step": done, **logs})
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if main and callbacks.on_log is not None:
                callbacks.on_log(done, logs)
        if _due(done, loop.checkpoint_every, loop.steps) or stop.received:
            if main:
                save_checkpoint(checkpoints, done, own_state(accelerator.unwrap_model(wrapped)), optimizer, {})
            accelerator.wait_for_everyone()
        if stop.received:
            raise Interrupted(f"{stop.received} received: stopped after step {done} of {loop.steps} with a checkpoint in "
                              f"{checkpoints}; rerun to resume")
        if main and callbacks.on_eval is not None and _due(done, loop.eval_every, loop.steps):
            callbacks.on_eval(done)


def train_task(
    task_for: Callable[[torch.device], Task],
    n_samples: int,
    params: LoopParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None,
    accelerator: Accelerator | None,
) -> TrainResult:
    """Build a task on the accelerator's device and train it with ``params``' loop knobs."""
    accelerator = accelerator or make_accelerator(params)
    loop = LoopConfig.from_params(params, seed)
    return run_loop(task_for(accelerator.device), n_samples, params.lr, loop, checkpoints, accelerator, callbacks)
