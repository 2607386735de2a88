"""MLflow setup, provenance tags, and the model registry.

The store is sqlite under ``mlruns/`` with artifacts in ``mlruns/artifacts`` (current MLflow
refuses the plain file store); ``MLFLOW_TRACKING_URI`` overrides it, e.g. for a shared server.
MLflow records absolute artifact locations, so a project copied or moved with its ``mlruns/`` is
relocated when it is first configured: its store then points at its own ``mlruns/`` and a copy
never logs into, or reads from, the original's folder.
A stage run nests under the pipeline's run when ``SELFTOK_PARENT_RUN_ID`` is set.
"""

from __future__ import annotations

import logging
import os
import platform
import sqlite3
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
from mlflow.tracking import MlflowClient

from selftok.hashing import file_hash
from selftok.nested import flatten

PARENT_RUN_ENV = "SELFTOK_PARENT_RUN_ID"
CHAMPION, CHALLENGER = "champion", "challenger"
# MLflow 3's UI opens an experiment without this tag on its GenAI overview (traces, evaluations);
# tagged as model development it opens on the runs table, where this project's runs are.
EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"


# What the user set, read before anything here calls mlflow.set_tracking_uri (which writes this
# variable itself, so reading it later would return whichever project was configured last).
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


log = logging.getLogger(__name__)


def project_store_uri(root: Path) -> str:
    """The project's own store: sqlite under ``root/mlruns``."""
    return f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"


def tracking_uri(root: Path) -> str:
    return USER_TRACKING_URI or project_store_uri(root)


def _project_of(location: str) -> str | None:
    """The ``.../mlruns`` folder of an experiment laid out as this module makes them
    (``<project>/mlruns/artifacts``), else None."""
    path = unquote(urlparse(location).path) if location.startswith("file:") else location
    return path.removesuffix("/artifacts") if path.endswith("/mlruns/artifacts") else None


def _rewrite_prefix(conn: sqlite3.Connection, before: str, after: str) -> None:
    """Replace the leading ``before`` by ``after`` in every text column of every table."""
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        for column in conn.execute(f'PRAGMA table_info("{table}")').fetchall():
            if any(kind in str(column[2]).upper() for kind in ("CHAR", "TEXT", "CLOB")):
                name = column[1]
                conn.execute(f'UPDATE "{table}" SET "{name}" = ? || substr("{name}", ?) WHERE substr("{name}", 1, ?) = ?',
                             (after, len(before) + 1, len(before), before))


def relocate_store(root: Path) -> list[str]:
    """Point a copied or moved project's store at its own ``mlruns/``: every location recorded
    under another project's ``mlruns/`` (experiments, runs, logged models, model versions) moves
    to this one's, where the copy holds the same files. Returns the old folders (none: nothing to do)."""
    db = root / "mlruns" / "mlflow.db"
    if not db.is_file():
        return []
    here = (root / "mlruns").resolve()
    with closing(sqlite3.connect(db, timeout=60)) as conn, conn:
        try:
            locations = [row[0] for row in conn.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.OperationalError:  # a store MLflow has not set up yet
            return []
        old = sorted({_project_of(location) for location in locations if location} - {None, str(here)})
        for folder in old:
            _rewrite_prefix(conn, Path(folder).as_uri() + "/", here.as_uri() + "/")
            _rewrite_prefix(conn, folder + "/", f"{here}/")
    for folder in old:
        log.info("MLflow store moved: locations under %s now point at %s", folder, here)
    return old


def configure(root: Path, experiment: str) -> str:
    """Point MLflow at the project store and make sure the experiment exists; returns its id."""
    uri = tracking_uri(root)
    if uri.startswith("sqlite:///"):
        (root / "mlruns" / "artifacts").mkdir(parents=True, exist_ok=True)
    if uri == project_store_uri(root):
        relocate_store(root)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_DEVELOPMENT:  # a store made before the tag
            MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    else:
        location = (root / "mlruns" / "artifacts").resolve().as_uri() if uri.startswith("sqlite:///") else None
        experiment_id = mlflow.create_experiment(experiment, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _git(root: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def device_tags() -> dict[str, str]:
    import torch

    tags = {"device.cpu_threads": str(torch.get_num_threads()), "device.platform": platform.platform()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        tags |= {
            "device.gpu_name": props.name,
            "device.gpu_count": str(torch.cuda.device_count()),
            "device.gpu_memory_gb": f"{props.total_memory / 2**30:.1f}",
        }
    return tags


def input_hashes(inputs: Mapping[str, Path]) -> dict[str, str]:
    """sha256 prefix of every input path (``missing`` for one that does not exist)."""
    return {name: file_hash(path) if path.exists() else "missing" for name, path in inputs.items()}


def provenance_tags(root: Path, stage: str, params_digest: str, hashes: Mapping[str, str]) -> dict[str, str]:
    commit = _git(root, "rev-parse", "HEAD")
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no")) if commit else False
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": str(dirty).lower(),
        "dvc.stage": stage,
        "params.hash": params_digest,
        **device_tags(),
    }
    for name, digest in hashes.items():
        tags[f"input.{name}.sha256"] = digest
    return tags


def input_context(stage: str) -> str:
    """How a stage uses its data, as MLflow's dataset context: evaluation, training or processing."""
    if stage == "evaluate":
        return "evaluation"
    return "training" if stage.startswith(("train", "pretrain", "rl")) else "processing"


def log_datasets(root: Path, stage: str, hashes: Mapping[str, str]) -> None:
    """Log each data dep of the stage (``data/...``) as a dataset input of the active run: its path
    as source, its content hash as digest, so the runs table's Datasets column shows which data
    every run read, and two runs that read the same bytes show the same digest."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    datasets = []
    for dep, digest in hashes.items():
        if dep.startswith("data/") and digest != "missing":
            with warnings.catch_warnings():  # the local file scheme is registered twice; either source is the same
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(str((root / dep).resolve()))
            datasets.append(MetaDataset(source, name=dep, digest=digest))
    if datasets:
        mlflow.log_inputs(datasets=datasets, contexts=[input_context(stage)] * len(datasets), tags_list=[None] * len(datasets))


@contextmanager
def stage_run(
    root: Path,
    experiment: str,
    stage: str,
    params: Mapping[str, Any],
    params_digest: str,
    hashes: Mapping[str, str],
    system_metrics: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """One MLflow run for one stage, nested under the pipeline run when there is one."""
    configure(root, experiment)
    parent = os.environ.get(PARENT_RUN_ENV)
    with mlflow.start_run(
        run_name=stage,
        parent_run_id=parent or None,
        nested=bool(parent),
        tags=provenance_tags(root, stage, params_digest, hashes),
        log_system_metrics=system_metrics,
    ) as run:
        flat = {k: (str(v) if not isinstance(v, (int, float, str, bool)) else v) for k, v in flatten(params).items()}
        items = list(flat.items())
        for start in range(0, len(items), 100):
            mlflow.log_params(dict(items[start : start + 100]))
        log_datasets(root, stage, hashes)
        yield run


def set_alias(model_name: str, alias: str, version: str | int) -> None:
    MlflowClient().set_registered_model_alias(model_name, alias, str(version))


def alias_version(model_name: str, alias: str) -> str | None:
    """The version behind an alias, or None when the model or the alias does not exist yet."""
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def log_model_dir(model_dir: Path, registered_name: str, companions: Mapping[str, Path | None] | None = None) -> str:
    """Log a model folder (safetensors + config.json) to the active run and register a new version.

    Logged as a pyfunc model from code (src/selftok/mlflow_model.py), so the registry holds
    loadable models without pickling anything. ``companions`` are folders logged with it that it
    needs at serving time (a VLM's ``tokenizer`` and ``renderer``: its codes become images and
    images become its codes); None entries are left out. Returns the new version number.
    """
    from selftok import __version__

    extra = {name: str(folder) for name, folder in (companions or {}).items() if folder is not None}
    info = mlflow.pyfunc.log_model(
        name=registered_name,
        python_model=str(Path(__file__).with_name("mlflow_model.py")),
        artifacts={"weights": str(model_dir), **extra},
        pip_requirements=[f"selftok=={__version__}"],
        registered_model_name=registered_name,
    )
    version = str(info.registered_model_version)
    MlflowClient().set_model_version_tag(registered_name, version, "weights.sha256", file_hash(model_dir))
    return version
