"""Bad inputs and concurrent runs: malformed params, a hand-edited dvc.yaml, a missing upstream
output, a second pipeline, a stage run beside the flow, the MLflow store down. Each is refused
with an error that names the key, file or lock, before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from selftok.config import load_params
from selftok.errors import ConfigError, StageError
from selftok.stages.base import PIPELINE_LOCK, read_spec, run_stage

pytestmark = pytest.mark.faults

# One malformed value per params type: int, float, bool, enum, list, nested section, unknown key.
MALFORMED = [
    ("vae.steps", "six"), ("vae.steps", -3), ("rl.lr", "fast"), ("rl.penalize_extra_objects", "perhaps"),
    ("data.source", "ftp"), ("vae.block_out_channels", "wide"), ("vlm.sampling", 3), ("tokenizer.nonsense_key", 1),
]


@pytest.mark.parametrize(("key", "value"), MALFORMED, ids=[f"{k}={v}" for k, v in MALFORMED])
def test_malformed_params_name_the_key(project: Path, key: str, value: object) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    section, _, leaf = key.partition(".")
    params[section][leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(project / "params.yaml")


def test_params_that_are_not_yaml_name_the_file(project: Path) -> None:
    (project / "params.yaml").write_text("vae:\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"params\.yaml"):
        load_params(project / "params.yaml")


@pytest.mark.parametrize("edit", ["syntax", "undefined_var", "unknown_stage"])
def test_a_hand_edited_dvc_yaml_names_the_file_or_stage(project: Path, edit: str) -> None:
    dvc_file = project / "dvc.yaml"
    text = dvc_file.read_text()
    if edit == "syntax":
        dvc_file.write_text(text.replace("stages:", "stages:\n  broken: [", 1))
    elif edit == "undefined_var":
        dvc_file.write_text(text.replace("cmd: selftok stage ingest", "cmd: selftok stage ${no_such_var}", 1))
    else:
        dvc_file.write_text(text.replace("\n  ingest:", "\n  ingest_renamed:", 1))
    with pytest.raises((ConfigError, KeyError), match=r"dvc\.yaml"):
        read_spec(project, "ingest")


def test_a_missing_upstream_output_is_named(project: Path) -> None:
    with pytest.raises(StageError, match=r"missing input\(s\) .*data/shards.*dvc repro validate"):
        run_stage("validate", project)
    assert not (project / "metrics" / "validate.json").exists()


def test_a_second_pipeline_is_refused_and_nothing_is_touched(project: Path) -> None:
    from flows.pipeline import pipeline

    lock = FileLock(str(project / PIPELINE_LOCK), timeout=0)
    (project / PIPELINE_LOCK).parent.mkdir(parents=True, exist_ok=True)
    before = sorted(p.relative_to(project) for p in project.rglob("*") if ".dvc" not in p.parts)
    with lock, pytest.raises(RuntimeError, match="another selftok pipeline is already running"):
        pipeline.fn(root=str(project), stages=["ingest"])
    assert sorted(p.relative_to(project) for p in project.rglob("*") if ".dvc" not in p.parts) == before


def test_a_stage_run_beside_a_running_pipeline_is_refused(project: Path) -> None:
    """The flow holds the lock while it runs; `selftok stage` (or `dvc repro` by hand) run beside it is refused."""
    (project / PIPELINE_LOCK).parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               f"lock = FileLock({str(project / PIPELINE_LOCK)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = subprocess.run([sys.executable, "-m", "selftok", "stage", "ingest", "--root", str(project)],
                                capture_output=True, text=True)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert "a selftok pipeline is running" in result.stdout + result.stderr and "selftok-pipeline.lock" in result.stdout + result.stderr
    assert not (project / "data" / "shards").exists() and not (project / "metrics" / "ingest.json").exists()


def test_the_mlflow_server_down_fails_the_stage_by_name(project: Path) -> None:
    """A tracking server that does not answer: the stage stops with the store's address, writes no metrics."""
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    import os

    result = subprocess.run([sys.executable, "-m", "selftok", "stage", "ingest", "--root", str(project)],
                            capture_output=True, text=True, env={**os.environ, **env})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "http://127.0.0.1:9" in output and "Traceback" not in output
    assert not (project / "metrics" / "ingest.json").exists()


def test_the_mlflow_store_failing_mid_stage_leaves_no_metrics(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store stops accepting writes after the stage has started (a full disk, a server gone)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    def down(*_args: object, **_kwargs: object) -> None:
        raise MlflowException("API request failed: connection refused")

    monkeypatch.setattr(mlflow, "log_metric", down)  # the last call of a stage's run, after its work
    with pytest.raises(StageError, match=r"stage ingest: the MLflow store sqlite:///.*mlflow\.db failed: .*connection refused"):
        run_stage("ingest", project)
    monkeypatch.undo()
    assert not (project / "metrics" / "ingest.json").exists()
    shards = sorted((project / "data" / "shards").rglob("*.tar"))
    assert shards and all(json.dumps(1) for _ in shards)  # the outputs written before the failure are whole shards
    from selftok.data.shards import read_samples

    assert all(list(read_samples(shard)) for shard in shards)
