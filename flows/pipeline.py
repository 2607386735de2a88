"""The end-to-end pipeline: one Prefect task per DVC stage, in dvc.yaml order.

Prefect owns execution (ordering, retries, timeouts, logs); DVC decides what to recompute:
each task runs `dvc repro --single-item STAGE`, which skips a stage whose params, deps and
code are unchanged. Every stage's MLflow run nests under one pipeline run tagged with the
Prefect flow-run id. Only one pipeline runs per project at a time (a lock file refuses a
second with a clear message rather than letting two runs fight over DVC's lock).

The console stays short: each line a stage prints is relayed once, prefixed with the stage
(a progress bar redrawn with carriage returns counts as its last state), and the stages' loops
print a few lines each (selftok.progress). While it runs, the flow keeps a status file that
`selftok status` reads: which stage runs, since when, and how many are done.

A stop signal (SIGTERM, SIGINT) is passed to the running stage's whole process group (dvc and
the stage under it: a training stage saves a checkpoint and exits), which gets STOP_GRACE_SECONDS
before it is killed; then the flow fails at once with a message that names the signal, instead
of waiting for stages that no longer run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import mlflow
import yaml
from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from selftok import tracking
from selftok.config import Params, load_params
from selftok.nested import flatten
from selftok.progress import PIPELINE_STATUS, write_status
from selftok.schema import params_hash
from selftok.stages.base import PIPELINE_LOCK, STAGE_TIMES, resolve_stages, write_atomic

LOCK_FILE = PIPELINE_LOCK  # relative to the project root; a stage run directly takes it too
SKIPPED = "didn't change, skipping"
TIMINGS_FILE = Path("metrics", "pipeline.json")  # relative to the project root; written by the flow, no DVC output
STOP_GRACE_SECONDS = 20.0  # a training stage needs one step and a checkpoint to stop cleanly
_RUNNING: set[subprocess.Popen[bytes]] = set()  # stage process groups to stop on a signal
_STOPPED = threading.Event()  # a stop signal arrived: no retries


def _retry(_task: Any, _task_run: Any, _state: Any) -> bool:
    """Retry a failed stage, unless the flow is being stopped."""
    return not _STOPPED.is_set()


class StageFailed(RuntimeError):
    """A stage exited non-zero; the message names the stage and its last output lines."""


class PipelineStopped(StageFailed):
    """The flow received a stop signal; the running stage was stopped (a rerun continues from it)."""


def stop_stages(grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM each running stage's process group, then SIGKILL what is left after ``grace`` seconds."""
    for process in list(_RUNNING):
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + grace
        while _group_alive(process) and time.monotonic() < deadline:  # dvc exits first; the stage saves its checkpoint
            time.sleep(0.1)
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the group may outlive its leader


def on_temporary_server() -> bool:
    """Whether this process talks to a temporary Prefect server of its own (no PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL

    return not PREFECT_API_URL.value()


def temporary_servers() -> list[Any]:
    """Prefect's temporary API servers started by this process."""
    from prefect.server.api.server import SubprocessASGIServer

    return [server for server in SubprocessASGIServer._instances.values() if server.server_process is not None]


def exit_without_server(project: Path, number: int, message: str) -> None:
    """End the command now. A stop signal sent to `selftok run`'s process group (stopping `make
    run`) also stops Prefect's temporary server, a child in that group; Prefect would then retry
    reporting the failure to the dead server for minutes. So: stop the server, close the MLflow
    run as killed, remove the status file, say why, exit (the OS releases the pipeline lock)."""
    for server in temporary_servers():
        with suppress(Exception):
            server.stop()
    with suppress(Exception):
        mlflow.end_run(status="KILLED")
    (project / PIPELINE_STATUS).unlink(missing_ok=True)
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(128 + number)


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the stage's group is left (its leader reaped, so it is no zombie)."""
    process.poll()
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def stop_on_signals(project: Path) -> Iterator[None]:
    """While the flow runs: a stop signal stops the running stage and fails the flow promptly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(number: int, _frame: object) -> None:
        _STOPPED.set()
        stop_stages()
        message = (f"{signal.Signals(number).name} received: stopped the running stage; rerun to continue from it "
                   "(a training stage resumes from its checkpoint)")
        if on_temporary_server():
            exit_without_server(project, number, message)
        raise PipelineStopped(message)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stage_order(root: Path) -> list[str]:
    """Stages in the order dvc.yaml declares them, ``foreach`` groups expanded in place
    (``tokenize@selftok``, ``tokenize@spatial``); kept topological by convention, tested."""
    return list(resolve_stages(root))


def select_stages(order: list[str], names: list[str] | None) -> list[str]:
    """The stages of ``order`` named in ``names`` (all when empty); a group name (``tokenize``) selects every arm."""
    return [s for s in order if not names or s in names or s.partition("@")[0] in names]


def _stage_env(root: Path, parent_run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env[tracking.PARENT_RUN_ENV] = parent_run_id
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(root)  # the parent run's store, whatever ran before
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a bar per model download, in a log
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def console_line(raw: bytes) -> str:
    """What a terminal would show of one output line: the text after its last carriage return
    (a redrawn progress bar keeps only its last state), without trailing space."""
    return raw.decode(errors="replace").rstrip().rpartition("\r")[2].rstrip()


def relay(process: subprocess.Popen[bytes], stage: str, logger: Any) -> list[str]:
    """Log every non-empty line of the stage's output once, prefixed with the stage; returns the last 25."""
    assert process.stdout is not None
    tail: list[str] = []
    for raw in process.stdout:  # bytes: split on newlines only, never on carriage returns
        line = console_line(raw)
        if line:
            logger.info("[%s] %s", stage, line)
            tail = [*tail, line][-25:]
    process.wait()
    return tail


@task(task_run_name="{stage}")
def reproduce(stage: str, root: str, parent_run_id: str, force: bool = False) -> dict[str, Any]:
    """`dvc repro --single-item STAGE`, its output relayed into the Prefect logs once."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    logger.info("stage %s started", stage)
    started, since = time.perf_counter(), time.time()
    # its own process group, so that a signal can stop dvc and the stage under it together
    with subprocess.Popen(command, cwd=root, env=_stage_env(Path(root), parent_run_id), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True) as process:
        _RUNNING.add(process)
        try:  # Prefect's task engine installs its own SIGTERM handler for the task: this one goes over it
            with stop_on_signals(Path(root)):
                tail = relay(process, stage, logger)
        finally:
            _RUNNING.discard(process)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise StageFailed(f"stage {stage!r} failed (dvc exit {process.returncode}):\n" + "\n".join(tail))
    skipped = any(SKIPPED in line for line in tail)
    logger.info("stage %s %s in %.1fs", stage, "skipped (unchanged)" if skipped else "ran", seconds)
    return {"stage": stage, "skipped": skipped, "seconds": seconds, **stage_time(Path(root), stage, since, skipped)}


def stage_time(root: Path, stage: str, since: float, skipped: bool) -> dict[str, float | None]:
    """The stage's own time as its process recorded it (selftok.stages.base.record_stage_time):
    ``stage_seconds`` (0 when DVC skipped it: no stage process ran), ``startup_seconds`` (its
    interpreter and imports) and ``train_seconds`` (its training loop, when it has one)."""
    path = root / STAGE_TIMES / f"{stage}.json"
    record = json.loads(path.read_text()) if path.is_file() and not skipped else {}
    if record.get("finished", 0.0) < since:  # an earlier run's record
        record = {}
    return {"stage_seconds": float(record.get("seconds", 0.0)), "startup_seconds": record.get("startup_seconds"),
            "train_seconds": record.get("train_seconds")}


def timings(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    """metrics/pipeline.json: each stage's wall time as the flow saw it and its own time, the run's
    wall time, and the orchestration overhead (wall minus the stages' own time: Prefect, DVC's
    checks and start-up, each stage process's start-up and imports, the flow's own work)."""
    own = sum(r.get("stage_seconds", 0.0) for r in results)
    startup = sum(r.get("startup_seconds") or 0.0 for r in results)
    stages = {r["stage"]: {"skipped": r["skipped"], "wall_seconds": r["seconds"], "stage_seconds": r.get("stage_seconds", 0.0),
                           "startup_seconds": r.get("startup_seconds"), "train_seconds": r.get("train_seconds")} for r in results}
    return {"stages": stages, "wall_seconds": wall, "stages_seconds": own, "stage_startup_seconds": startup,
            "orchestration_overhead_seconds": wall - own, "orchestration_overhead_fraction": (wall - own) / wall if wall > 0 else 0.0}


def run_stages(project: Path, selected: list[str], parent_run_id: str, params: Params, forced: set[str]) -> list[dict[str, Any]]:
    """Each stage in order under the pipeline's retries and timeout, the status file naming the
    running stage, since when, and the stages done."""
    run = reproduce.with_options(retries=params.pipeline.retries, retry_delay_seconds=params.pipeline.retry_delay_seconds,
                                 timeout_seconds=params.pipeline.stage_timeout_seconds, retry_condition_fn=_retry)
    status: dict[str, Any] = {"pid": os.getpid(), "started": time.time(), "stages": selected, "finished": []}
    results = []
    for index, stage in enumerate(selected, 1):
        write_status(project / PIPELINE_STATUS, status | {"stage": stage, "index": index, "stage_started": time.time()})
        results.append(run(stage, str(project), parent_run_id, stage in forced))
        status["finished"].append(stage)
    return results


def headline_metrics(root: Path) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for path in sorted((root / "metrics").glob("*.json")):
        if path.stem not in ("bench", TIMINGS_FILE.stem):
            metrics |= flatten(json.loads(path.read_text()), f"{path.stem}.")
    return metrics


def summary_markdown(results: list[dict[str, Any]], metrics: dict[str, Any]) -> str:
    lines = ["# Selftok pipeline", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {'skipped' if r['skipped'] else 'ran'} | {r['seconds']:.1f} |" for r in results]
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines)


@flow(name="selftok-pipeline", log_prints=True)
def pipeline(
    root: str = ".", stages: list[str] | None = None, force: bool = False, force_stages: list[str] | None = None
) -> list[dict[str, Any]]:
    """Run the DVC stages in order (all, or the named ones), under one MLflow parent run.

    ``force`` reruns every selected stage; ``force_stages`` only those (e.g. ``ingest`` when
    a folder source may hold new files that DVC cannot see).
    """
    started = time.perf_counter()
    project = Path(root).resolve()
    params = load_params(project / "params.yaml")
    order = stage_order(project)
    unknown = sorted(name for name in set(stages or []) | set(force_stages or []) if not select_stages(order, [name]))
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {order}")
    selected = select_stages(order, stages)
    _STOPPED.clear()
    forced = set(selected if force else select_stages(order, force_stages) if force_stages else [])
    lock = FileLock(str(project / LOCK_FILE), timeout=0)
    (project / LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(f"another selftok pipeline is already running in {project} (lock {LOCK_FILE}); "
                           "wait for it to finish") from None
    try:
        tracking.configure(project, params.tracking.experiment)
        raw = yaml.safe_load((project / "params.yaml").read_text())
        tags = {"prefect.flow_run_id": str(flow_run.get_id() or ""), "params.hash": params_hash(raw), "kind": "pipeline"}
        with mlflow.start_run(run_name="pipeline", tags=tags) as parent, stop_on_signals(project):
            results = run_stages(project, selected, parent.info.run_id, params, forced)
            metrics = headline_metrics(project)
            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.log_text(summary_markdown(results, metrics), "summary.md")
        create_markdown_artifact(summary_markdown(results, metrics), key="selftok-pipeline-summary",
                                 description="Stages run or skipped, and the headline metrics")
        write_atomic(project / TIMINGS_FILE, json.dumps(timings(results, time.perf_counter() - started), indent=2) + "\n")
        return results
    finally:
        (project / PIPELINE_STATUS).unlink(missing_ok=True)
        lock.release()


if __name__ == "__main__":
    pipeline()
