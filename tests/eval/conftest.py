"""Fixtures of the eval tests (helpers live in scene_fixtures.py)."""

from __future__ import annotations

import pytest
from scene_fixtures import HOLDOUT

from selftok.data.scenes import SceneConfig


@pytest.fixture
def scene_config() -> SceneConfig:
    return SceneConfig(holdout=HOLDOUT)
