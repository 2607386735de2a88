"""The fault suite's fixture: a private clone of the session's smoke run to break things in."""

from pathlib import Path

import pytest
from tests.conftest import clone_project


@pytest.fixture
def clone(smoke_run, tmp_path: Path) -> Path:
    """A copy of the session's smoke project after its full run (models, data, MLflow store)."""
    return clone_project(smoke_run[0], tmp_path / "project")
