"""The CLI's log handler follows sys.stderr, so a runner that swaps and closes it breaks nothing."""

import io
import logging
import sys

import pytest

from selftok.commands.common import setup_logging


def test_logging_survives_a_swapped_and_closed_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)
    setup_logging()
    logging.getLogger("selftok.test").info("while swapped")
    assert "while swapped" in swapped.getvalue()
    swapped.close()
    later = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later)
    logging.getLogger("selftok.test").info("after the runner closed its stream")  # raised ValueError before
    assert "after the runner closed its stream" in later.getvalue()
