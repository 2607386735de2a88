"""Every error the project raises on purpose, in one place, at the bottom of the layers.

Each one means a problem the user can fix, and its message names the key, file or sample.
Anything else that escapes is a bug.
"""

from __future__ import annotations


class SelftokError(Exception):
    """Base of the project's own errors: the CLI prints these as one line instead of a traceback."""


class ConfigError(SelftokError, ValueError):
    """params.yaml (or a profile) is missing, malformed, or holds a value the pipeline cannot run with."""


class StageError(SelftokError, RuntimeError):
    """A stage ran and refused its inputs (e.g. a failed data contract); the message says why."""


class SuiteError(StageError):
    """A data suite could not run (bad manifest, an expectation raised): no verdict was reached."""


class DataContractError(StageError):
    """A data suite ran and the data failed it: too many bad samples or a table-level failure."""


class ShardError(SelftokError, RuntimeError):
    """A shard could not be read: truncated, corrupt, or not a tar file. Names the shard."""


class CheckpointError(StageError):
    """A checkpoint or model file is truncated or corrupt; names the file so it can be removed."""


class Interrupted(StageError):
    """A stop signal (SIGTERM, SIGINT) arrived; the stage saved a checkpoint first and a rerun resumes."""
