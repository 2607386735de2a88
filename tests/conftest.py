"""Shared fixtures: a temporary copy of the project on a chosen profile."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from selftok.config import profile_yaml

ROOT = Path(__file__).resolve().parents[1]
# The tests never reach a hub or send telemetry, in this process or any it starts: set before
# huggingface_hub, transformers or diffusers are imported (they read these once).
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS"):
    os.environ[_name] = "1"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
PROJECT_FILES = ("dvc.yaml", "src", "flows", "profiles", ".dvc/config", ".dvcignore")


def copy_project(dest: Path, profile: str = "smoke") -> Path:
    """Copy what the pipeline needs into ``dest``, with the merged profile as params.yaml, DVC initialised."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / "params.yaml").write_text(profile_yaml(ROOT, profile))  # the merged profile, as `selftok profile use` writes it
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "--force", "-q"], cwd=dest, check=True)
    return dest


def clone_project(source: Path, dest: Path) -> Path:
    """A copy of a project that has run, its MLflow store included: the store records absolute
    artifact paths, so every path under ``source`` in it is rewritten to ``dest``. Tests that
    change a project (retraining, injected faults) start from a copy of the shared smoke run."""
    shutil.copytree(source, dest, symlinks=True)
    database = dest / "mlruns" / "mlflow.db"
    if database.is_file():
        with sqlite3.connect(database) as db:
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for column in db.execute(f"PRAGMA table_info('{table}')").fetchall():
                    if column[2].upper() in ("TEXT", "VARCHAR") or column[2].upper().startswith("VARCHAR"):
                        db.execute(f'UPDATE "{table}" SET "{column[1]}" = replace("{column[1]}", ?, ?)', (str(source), str(dest)))
    return dest


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One Prefect test server for the whole run, shared by every test that runs a flow.

    Starting a server per module raced the machine's load (a busy machine once missed a 30 s
    start-up); one start with a generous timeout costs once and cannot time out on load alone.
    """
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=600):
        yield


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, prefect_server: None) -> tuple[Path, Any, Any]:
    """The whole smoke pipeline run twice (the second skips), once per test run: the end-to-end
    tests read it; the retraining and fault tests work on clones (clone_project)."""
    from flows.pipeline import pipeline

    project = copy_project(tmp_path_factory.mktemp("e2e") / "project")
    first = pipeline(root=str(project))
    second = pipeline(root=str(project))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return project, first, second


@pytest.fixture(autouse=True)
def _isolated_tools(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Never touch the user's MLflow store or Prefect home from a test.

    mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into this process's environment, so it
    is dropped before and after every test: no subprocess inherits an earlier test's store.
    """
    home = tmp_path_factory.getbasetemp()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    monkeypatch.delenv("SELFTOK_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(scope="session")
def project_factory():
    """copy_project, for module-scoped fixtures that build their own project copy."""
    return copy_project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh temporary copy of the project on the smoke profile."""
    return copy_project(tmp_path / "project")
