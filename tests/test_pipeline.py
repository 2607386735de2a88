"""Integration: the real stages through DVC and the Prefect flow, on the smoke profile."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from selftok import tracking
from selftok.progress import PIPELINE_STATUS
from selftok.stages.base import resolve_stages

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def dvc(project: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def stage_runs(project: Path) -> list:
    mlflow.set_tracking_uri(tracking.tracking_uri(project))
    return mlflow.search_runs(experiment_names=["selftok-smoke"], output_format="list")


def test_dvc_order_is_topological() -> None:
    from flows.pipeline import select_stages, stage_order

    stages = resolve_stages(ROOT)
    order = stage_order(ROOT)
    assert order.index("tokenize@selftok") < order.index("tokenize@spatial") < order.index("pretrain_vlm@selftok")
    assert select_stages(order, ["tokenize", "evaluate"]) == ["tokenize@selftok", "tokenize@spatial", "evaluate"]
    produced = {out if isinstance(out, str) else next(iter(out)): name for name in order for out in stages[name].get("outs", [])}
    for position, name in enumerate(order):
        for dep in stages[name].get("deps", []):
            producer = next((stage for out, stage in produced.items() if dep == out or dep.startswith(out + "/")), None)
            assert producer is None or order.index(producer) < position, f"{name} runs before {producer}"


def test_dvc_repro_validate_then_skip(project: Path) -> None:
    first = dvc(project, "repro", "validate")
    assert "Running stage 'ingest'" in first and "Running stage 'validate'" in first
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"ingest", "validate"}
    assert lock["validate"]["params"]["params.yaml"]["data.image_size"] == 16
    validate = json.loads((project / "metrics" / "validate.json").read_text())
    assert validate["n_accepted"] == 224 and validate["n_quarantined"] == 0
    assert {s: c["accepted"] for s, c in validate["splits"].items()} == {"train": 160, "val": 32, "images": 32}
    assert (project / "data" / "accepted" / "manifest.parquet").is_file()
    runs = stage_runs(project)
    assert sorted(r.data.tags["dvc.stage"] for r in runs) == ["ingest", "validate"]
    for run in runs:
        assert len(run.data.tags["params.hash"]) == 16 and run.data.tags["git.commit"]
    validated = next(r for r in runs if r.data.tags["dvc.stage"] == "validate")
    read = {i.dataset.name: i.dataset.digest for i in mlflow.get_run(validated.info.run_id).inputs.dataset_inputs}
    assert read == {"data/shards": validated.data.tags["input.data/shards.sha256"]}  # lineage in the Datasets column
    experiment = mlflow.get_experiment(validated.info.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_DEVELOPMENT  # the UI opens on the runs

    second = dvc(project, "repro", "validate")
    assert "Stage 'ingest' didn't change, skipping" in second
    assert "Stage 'validate' didn't change, skipping" in second
    assert len(stage_runs(project)) == 2


def test_changed_param_reruns_only_downstream(project: Path) -> None:
    dvc(project, "repro", "validate")
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("caption_max_chars: 200", "caption_max_chars: 180"))
    out = dvc(project, "repro", "validate")
    assert "Stage 'ingest' didn't change, skipping" in out and "Running stage 'validate'" in out


def assert_timings(project: Path, ran: bool) -> None:
    """metrics/pipeline.json: every stage with its wall and own time; overhead = wall - the stages' own time."""
    timings = json.loads((project / "metrics" / "pipeline.json").read_text())
    stages = timings["stages"]
    assert list(stages) == ["ingest", "validate"] and all(s["skipped"] is not ran for s in stages.values())
    for stage in stages.values():
        assert (0 < stage["stage_seconds"] < stage["wall_seconds"] and stage["startup_seconds"] > 0) if ran else stage["stage_seconds"] == 0
    own = sum(s["stage_seconds"] for s in stages.values())
    assert timings["stages_seconds"] == pytest.approx(own) and timings["wall_seconds"] > sum(s["wall_seconds"] for s in stages.values())
    assert timings["orchestration_overhead_seconds"] == pytest.approx(timings["wall_seconds"] - own)
    assert timings["orchestration_overhead_fraction"] == pytest.approx(timings["orchestration_overhead_seconds"] / timings["wall_seconds"])


def test_flow_runs_stages_then_skips_and_names_a_failing_stage(project: Path, prefect_server) -> None:
    from flows.pipeline import StageFailed, pipeline

    first = pipeline(root=str(project), stages=["ingest", "validate"])
    assert [(r["stage"], r["skipped"]) for r in first] == [("ingest", False), ("validate", False)]
    runs = stage_runs(project)
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    assert parent.data.tags["prefect.flow_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["dvc.stage"] for r in children) == ["ingest", "validate"]
    assert_timings(project, ran=True)

    second = pipeline(root=str(project), stages=["ingest", "validate"])
    assert [r["skipped"] for r in second] == [True, True]
    assert_timings(project, ran=False)  # skipped: no stage process ran, the whole wall time is orchestration
    assert not (project / PIPELINE_STATUS).exists()  # `selftok status` falls back to DVC status once the flow is done

    # Break validate: the flow fails naming it, and ingest's outputs are left intact.
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("caption_min_chars: 3", "caption_min_chars: 100"))
    shards = sorted((project / "data" / "shards").rglob("*.tar"))
    with pytest.raises(StageFailed, match="stage 'validate' failed"):
        pipeline(root=str(project), stages=["ingest", "validate"])
    assert sorted((project / "data" / "shards").rglob("*.tar")) == shards
