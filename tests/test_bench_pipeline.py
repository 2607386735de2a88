"""`selftok bench pipeline`: the FLOP and peak arithmetic, and the command on the smoke profile."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from selftok.config import profile_yaml
from selftok.studies.stage_tasks import StageBench
from selftok.studies.throughput import matmul_peak, rates, share, time_loop

ROOT = Path(__file__).resolve().parents[1]


def test_rates_and_share_are_the_plain_ratios() -> None:
    result = share(rates(flops=3e9, seconds=4.0, data=1.0, steps=2), peak=15.0)
    assert result["seconds_per_step"] == 2.0 and result["steps_per_s"] == 0.5
    assert result["data_seconds_per_step"] == 0.5 and result["compute_seconds_per_step"] == 1.5 and result["data_fraction"] == 0.25
    assert result["gflop_per_step"] == 3.0 and result["gflop_per_s"] == 1.5 and result["peak_share"] == pytest.approx(0.1)


def test_matmul_peak_is_the_best_size() -> None:
    peak = matmul_peak(torch.device("cpu"), sizes=(32, 64), repeats=2)
    assert set(peak["matmul_gflop_per_s_by_size"]) == {"32", "64"}
    assert peak["peak_gflop_per_s"] == max(peak["matmul_gflop_per_s_by_size"].values()) > 0


class _Linear:
    """A loop task of one bias-free linear layer on fixed inputs: 2*B*I*O FLOPs forward and as many
    for the weight's gradient (the inputs need none)."""

    def __init__(self, n: int, i: int, o: int) -> None:
        self.module, self.x = nn.Linear(i, o, bias=False), torch.randn(n, i)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.module.parameters()), "lr": lr}]

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        return wrapped(self.x[index]).square().mean(), None

    def after_step(self, aux: Any, generator: torch.Generator) -> dict[str, float]:
        return {}


def test_time_loop_counts_forward_and_backward_flops_of_the_loop_step() -> None:
    task = _Linear(32, 16, 8)
    bench = StageBench(stage="linear", task=task, n_samples=32, batch_size=4, lr=1e-3, grad_clip=1.0, precision=None,
                       batch=lambda index, generator: task.x[index])
    result = time_loop(bench, steps=2, warmup=1)
    assert result["gflop_per_step"] * 1e9 == 2 * (2 * 4 * 16 * 8)
    assert result["steps"] == 2 and result["batch_size"] == 4
    assert result["seconds_per_step"] == pytest.approx(result["data_seconds_per_step"] + result["compute_seconds_per_step"])
    assert result["gflop_per_s"] == pytest.approx(result["gflop_per_step"] / result["seconds_per_step"])


def test_bench_pipeline_on_the_smoke_profile_merges_a_pipeline_block(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selftok.cli import app

    (tmp_path / "params.yaml").write_text(profile_yaml(ROOT, "smoke"))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "bench.json").write_text(json.dumps({"encode_images_per_s": 12.0}))
    out = CliRunner().invoke(app, ["bench", "pipeline", "--root", str(tmp_path), "--steps", "1", "--warmup", "1",
                                   "--stages", "train_renderer", "--threads", "1"])
    assert out.exit_code == 0, out.output
    bench = json.loads((tmp_path / "metrics" / "bench.json").read_text())
    assert bench["encode_images_per_s"] == 12.0  # what other benchmarks wrote is kept
    block = bench["pipeline"]
    assert block["threads"] == 1 and block["device"] in ("cpu", "cuda") and block["peak_gflop_per_s"] > 0
    assert list(block["stages"]) == ["train_renderer"]  # the tokenizer's VAE and the frozen tokenizer built on the way
    for stage in block["stages"].values():
        numbers = [stage[k] for k in ("steps_per_s", "seconds_per_step", "gflop_per_step", "gflop_per_s", "peak_share",
                                      "compute_seconds_per_step", "setup_seconds", "import_seconds")]
        assert all(math.isfinite(v) and v > 0 for v in numbers), stage
        assert 0 <= stage["data_seconds_per_step"] < stage["seconds_per_step"]
        assert stage["peak_share"] == pytest.approx(stage["gflop_per_s"] / block["peak_gflop_per_s"])
    assert "| train_renderer | 16 |" in out.output and "matmul peak" in out.output


def test_a_stage_that_trains_nothing_is_reported_not_measured(tmp_path: Path) -> None:
    from selftok.config import load_params
    from selftok.studies.throughput import bench_stage, table

    params = load_params(ROOT / "profiles" / "smoke.yaml")
    params = params.model_copy(update={"vae": params.vae.model_copy(update={"pretrained": "some/hub-vae"})})
    result = bench_stage("train_vae", params, torch.device("cpu"), steps=1, warmup=0, workdir=tmp_path)
    assert "nothing trains" in result["not_measured"]
    block = {"stages": {"train_vae": result}, "matmul_gflop_per_s_by_size": {"64": 1.0}, "peak_gflop_per_s": 1.0, "device": "cpu",
             "threads": 1, "steps": 1, "warmup": 0, "interpreter_seconds": 0.1}
    assert "| train_vae | not measured: vae.pretrained" in table(block)
