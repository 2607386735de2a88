"""The project's MLflow experiment opens on its runs, and each stage run lists the data it read."""

import shutil
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from selftok import tracking


def test_the_experiment_is_tagged_as_model_development_when_made_or_found(tmp_path: Path) -> None:
    experiment_id = tracking.configure(tmp_path, "fresh")
    assert MlflowClient().get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = mlflow.create_experiment("older")  # a store made before the tag
    assert tracking.EXPERIMENT_KIND_TAG not in MlflowClient().get_experiment(older).tags
    assert tracking.configure(tmp_path, "older") == older
    assert MlflowClient().get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.MODEL_DEVELOPMENT
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def test_a_stage_run_logs_its_data_deps_as_datasets_with_their_hashes(tmp_path: Path) -> None:
    (tmp_path / "data" / "accepted").mkdir(parents=True)
    (tmp_path / "data" / "accepted" / "manifest.parquet").write_bytes(b"rows")
    (tmp_path / "models" / "vae").mkdir(parents=True)
    hashes = tracking.input_hashes({"data/accepted": tmp_path / "data" / "accepted", "models/vae": tmp_path / "models" / "vae",
                                    "data/shards": tmp_path / "data" / "shards"})
    assert hashes["data/shards"] == "missing"
    with tracking.stage_run(tmp_path, "lineage", "train_tokenizer", {"tokenizer": {"steps": 3}}, "p" * 16, hashes) as run:
        pass
    with tracking.stage_run(tmp_path, "lineage", "evaluate", {}, "p" * 16, {"data/accepted": hashes["data/accepted"]}) as scored:
        pass
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("data/accepted", hashes["data/accepted"])]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    assert str(tmp_path / "data" / "accepted") in inputs[0].dataset.source
    evaluated = mlflow.get_run(scored.info.run_id).inputs.dataset_inputs
    assert {t.key: t.value for t in evaluated[0].tags}["mlflow.data.context"] == "evaluation"
    assert evaluated[0].dataset.digest == inputs[0].dataset.digest  # the same bytes read: the same dataset


def test_a_copied_project_logs_and_reads_artifacts_in_its_own_mlruns(tmp_path: Path) -> None:
    original, copy = tmp_path / "original", tmp_path / "copy"
    tracking.configure(original, "moved")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "none"}')
    with mlflow.start_run() as first:
        mlflow.log_text("first", "note.txt")
        version = tracking.log_model_dir(tmp_path / "model", "moved-model")
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # whatever the copy reads or writes must be its own

    experiment_id = tracking.configure(copy, "moved")
    with mlflow.start_run() as second:
        mlflow.log_text("second", "note.txt")
    own = (copy / "mlruns").resolve().as_uri() + "/"
    client = MlflowClient()
    assert client.get_experiment(experiment_id).artifact_location.startswith(own)
    runs = client.search_runs([experiment_id])
    assert {r.info.run_id for r in runs} == {first.info.run_id, second.info.run_id}
    assert all(r.info.artifact_uri.startswith(own) for r in runs)
    assert mlflow.artifacts.load_text(f"runs:/{first.info.run_id}/note.txt") == "first"
    assert client.get_model_version_download_uri("moved-model", version).startswith(own)
    downloaded = mlflow.artifacts.download_artifacts(f"models:/moved-model/{version}", dst_path=str(tmp_path / "dl"))
    assert (Path(downloaded) / "artifacts").is_dir()
    assert tracking.relocate_store(copy) == []  # once relocated, nothing left to move
