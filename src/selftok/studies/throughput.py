"""`selftok bench pipeline`: each training stage's optimizer step against the machine's matmul peak.

For every training stage the model and its batches are built the way the stage builds them
(selftok.studies.stage_tasks), a few warm-up steps run, then N optimizer steps of the project's
loop (selftok.training.loop: the same optimizer, step and batch indices) are timed. FLOPs per step
are counted by torch's FlopCounterMode on one extra step (matmuls, convolutions, attention;
forward and backward); the peak is the best rate of large fp32 ``torch.mm`` measured in the same
process at the same thread count, so ``peak_share`` = achieved / peak compares like with like.
A step's time splits into making its batch (the task's own indexing, decoding and collation,
timed apart on the same indices) and the rest: forward, backward and optimizer. Start-up is a
fresh interpreter importing what `selftok stage NAME` imports (the CLI, then the stage module).
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from selftok.config import Params
from selftok.rl.trainer import GRPO
from selftok.studies.stage_tasks import BUILDERS, Skipped, StageBench, rl_grpo
from selftok.training.loop import batch_indices, make_accelerator, make_optimizer, step_generator, train_step

log = logging.getLogger(__name__)

STAGES = (*BUILDERS, "rl_finetune")  # the training stages, in pipeline order
MATMUL_SIZES = {"cpu": (512, 1024, 2048), "cuda": (2048, 4096, 8192)}


def clock(device: torch.device) -> float:
    """Seconds, after the device has finished what it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def matmul_peak(device: torch.device, sizes: tuple[int, ...] | None = None, repeats: int = 5) -> dict[str, Any]:
    """Best GFLOP/s of fp32 ``torch.mm`` of n x n matrices (2 n^3 FLOPs), per size and overall."""
    by_size: dict[str, float] = {}
    for n in sizes or MATMUL_SIZES.get(device.type, MATMUL_SIZES["cpu"]):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        torch.mm(a, b)  # warm-up
        best = math.inf
        for _ in range(repeats):
            started = clock(device)
            torch.mm(a, b)
            best = min(best, clock(device) - started)
        by_size[str(n)] = 2.0 * n**3 / best / 1e9
    return {"peak_gflop_per_s": max(by_size.values()), "matmul_gflop_per_s_by_size": by_size}


def rates(flops: float, seconds: float, data: float, steps: int) -> dict[str, float]:
    """Per-step numbers from ``steps`` steps that took ``seconds`` in all, ``data`` of it making batches."""
    per_step = seconds / steps
    return {"steps": steps, "steps_per_s": 1.0 / per_step, "seconds_per_step": per_step, "data_seconds_per_step": data / steps,
            "compute_seconds_per_step": (seconds - data) / steps, "data_fraction": data / seconds,
            "gflop_per_step": flops / 1e9, "gflop_per_s": flops / per_step / 1e9}


def share(result: dict[str, Any], peak: float) -> dict[str, Any]:
    """``result`` with ``peak_share``: its achieved GFLOP/s over the measured matmul peak."""
    return {**result, "peak_share": result["gflop_per_s"] / peak}


def time_loop(bench: StageBench, steps: int, warmup: int, seed: int = 0) -> dict[str, float]:
    """``warmup`` untimed steps, one counted step (FLOPs), then ``steps`` timed steps of the project's loop."""
    accelerator = make_accelerator(bench.precision)
    optimizer = make_optimizer(bench.task, bench.lr)
    wrapped, optimizer = accelerator.prepare(bench.task.module, optimizer)
    device = accelerator.device

    def one(step: int) -> tuple[float, float]:
        index = batch_indices(bench.n_samples, bench.batch_size, step, seed, 0, 1)
        started = clock(device)
        bench.batch(index, step_generator(seed, step, 0))
        made = clock(device)
        train_step(bench.task, wrapped, optimizer, accelerator, bench.grad_clip, index, step_generator(seed, step, 0))
        return made - started, clock(device) - made

    for step in range(warmup):
        one(step)
    index = batch_indices(bench.n_samples, bench.batch_size, warmup, seed, 0, 1)
    with FlopCounterMode(display=False) as counter:
        train_step(bench.task, wrapped, optimizer, accelerator, bench.grad_clip, index, step_generator(seed, warmup, 0))
    timed = [one(warmup + 1 + i) for i in range(steps)]
    result = rates(float(counter.get_total_flops()), sum(t[1] for t in timed), sum(t[0] for t in timed), steps)
    return {"batch_size": bench.batch_size, **result}


def time_rl(grpo: GRPO, steps: int, warmup: int) -> dict[str, float]:
    """GRPO steps: the rollout (sampling the groups with the evaluation recipe) and the policy update."""
    device = grpo.run.lm.device

    def one(step: int) -> tuple[float, float]:
        started = clock(device)
        samples = grpo.sample(step)
        sampled = clock(device)
        grpo.update(step, samples)
        return sampled - started, clock(device) - sampled

    for step in range(warmup):
        one(step)
    with FlopCounterMode(display=False) as counter:
        one(warmup)
    timed = [one(warmup + 1 + i) for i in range(steps)]
    seconds, rollout = sum(t[0] + t[1] for t in timed), sum(t[0] for t in timed)
    p = grpo.params
    return {"batch_size": p.prompts_per_step * p.group_size, **rates(float(counter.get_total_flops()), seconds, 0.0, steps),
            "rollout_seconds_per_step": rollout / steps, "update_seconds_per_step": (seconds - rollout) / steps}


def import_seconds(stage: str) -> float:
    """Wall time of a fresh interpreter importing what `selftok stage STAGE` imports before the stage runs."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import selftok.cli, selftok.stages.{stage}"], check=True, capture_output=True)
    return time.perf_counter() - started


def bench_stage(stage: str, params: Params, device: torch.device, steps: int, warmup: int, workdir: Path,
                imports: bool = True) -> dict[str, Any]:
    """One stage's numbers: build (seconds), its timed steps, and its start-up; a stage that cannot be
    built here (nothing trains, a hub model out of reach) reports why instead."""
    started = time.perf_counter()
    try:
        if stage == "rl_finetune":
            grpo = rl_grpo(params, device, workdir)
            setup, result = time.perf_counter() - started, time_rl(grpo, steps, warmup)
            result["note"] = "decode and reward stubbed; rollout is the policy's sampling"
        else:
            bench = BUILDERS[stage](params, device, workdir)
            setup, result = time.perf_counter() - started, time_loop(bench, steps, warmup)
            result |= {"note": bench.note} if bench.note else {}
    except (Skipped, OSError, ValueError) as error:
        log.warning("bench %s: not measured: %s", stage, error)
        return {"not_measured": str(error)}
    return {**result, "setup_seconds": setup, **({"import_seconds": import_seconds(stage)} if imports else {})}


def bench_pipeline(params: Params, stages: list[str], steps: int, warmup: int, threads: int | None, imports: bool = True,
                   on_stage: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The ``pipeline`` block of metrics/bench.json: the peak, then every stage in ``stages``."""
    if threads:
        torch.set_num_threads(threads)
    device = make_accelerator(None).device
    peak = matmul_peak(device)
    out: dict[str, Any] = {**peak, "device": device.type, "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
                           "interpreter_seconds": _interpreter_seconds(), "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            result = bench_stage(stage, params, device, steps, warmup, Path(tmp), imports)
            out["stages"][stage] = share(result, peak["peak_gflop_per_s"]) if "gflop_per_s" in result else result
            if on_stage is not None:
                on_stage(stage, out["stages"][stage])
    return out


def _interpreter_seconds() -> float:
    """A bare interpreter's start: what every stage process pays before its imports."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True, capture_output=True)
    return time.perf_counter() - started


COLUMNS = ("stage", "batch", "steps/s", "s/step", "data s", "compute s", "GFLOP/step", "GFLOP/s", "of peak", "import s")


def table(result: dict[str, Any]) -> str:
    """The block as a Markdown table (docs/results.md), the peak under it."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for stage, r in result["stages"].items():
        if "not_measured" in r:
            lines.append(f"| {stage} | not measured: {r['not_measured']} |" + " |" * (len(COLUMNS) - 2))
            continue
        cells = [stage, str(r["batch_size"]), f"{r['steps_per_s']:.3g}", f"{r['seconds_per_step']:.3g}", f"{r['data_seconds_per_step']:.3g}",
                 f"{r['compute_seconds_per_step']:.3g}", f"{r['gflop_per_step']:.3g}", f"{r['gflop_per_s']:.3g}", f"{r['peak_share']:.1%}",
                 f"{r['import_seconds']:.2g}" if "import_seconds" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{n}: {v:.3g}" for n, v in result["matmul_gflop_per_s_by_size"].items())
    lines += ["", f"matmul peak {result['peak_gflop_per_s']:.3g} GFLOP/s (fp32 torch.mm, {result['device']}, {result['threads']} threads; "
              f"by size {sizes}); {result['steps']} timed steps after {result['warmup']} warm-up; bare interpreter "
              f"{result['interpreter_seconds']:.2g} s"]
    return "\n".join(lines) + "\n"
