"""The stage contract: what `selftok stage NAME` does around every stage's own logic.

A stage reads params.yaml and its declared deps, writes only its declared outs, writes
the metrics file it declares (``metrics/NAME.json``) and logs one MLflow run. Which params keys,
deps, metrics and plots files a stage has is read from dvc.yaml itself, so the MLflow params, the
params hash and the input hashes always match what DVC tracks, and a stage writes its plots
where dvc.yaml declares them (``StageContext.write_plot``). A ``foreach`` stage
``group@key`` runs the module ``selftok.stages.group``, which reads ``key`` from its spec.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from filelock import FileLock, Timeout
from mlflow.exceptions import MlflowException

from selftok import tracking
from selftok.config import PARAMS_FILE, Params, load_params
from selftok.errors import CheckpointError, ConfigError, StageError
from selftok.nested import flatten, select
from selftok.schema import params_hash

if TYPE_CHECKING:  # the flow and the CLI read stage specs without torch
    from selftok.training.loop import LogFn

log = logging.getLogger("selftok.stage")

PIPELINE_LOCK = Path(".dvc", "tmp", "selftok-pipeline.lock")  # relative to the project root; held by a flow or a direct stage
CHECKPOINTS_DIR = "checkpoints/"  # persisted outs under here are resume state (see guard_checkpoints)
INPUTS_RECORD = "inputs.json"
# Each stage's own time, one JSON file a stage (relative to the project root; git ignores it and DVC
# never tracks it): the flow reads it to tell the stages' time from its own (metrics/pipeline.json).
STAGE_TIMES = Path(".dvc", "tmp", "selftok-stage-times")
LOOP_SECONDS = ("train.seconds", "train_seconds", "rl_seconds")  # how stages report their training loop's seconds
# Nested params keys that steer only logging and evaluation: changing them reruns a stage, which
# then resumes its finished checkpoint and re-evaluates instead of training again.
NON_TRAINING_KEYS = frozenset({"eval", "sampling", "log_every", "eval_every", "checkpoint_every"})

Metrics = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """A stage as declared in dvc.yaml, after DVC's templating (``foreach``, ``${item}``, ``vars``)."""

    name: str
    params: list[str]
    deps: list[str]
    outs: list[str]
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    persisted: list[str] = field(default_factory=list)  # outs DVC keeps between runs (persist: true)

    @property
    def group(self) -> str:
        """The stage module's name: ``tokenize`` for ``tokenize@spatial``."""
        return self.name.partition("@")[0]

    @property
    def item(self) -> str | None:
        """The foreach key (``spatial`` for ``tokenize@spatial``); None for a plain stage."""
        return self.name.partition("@")[2] or None

    @property
    def metrics_file(self) -> str:
        """Where the stage contract writes the metrics: the stage's first declared metrics file."""
        if not self.metrics:
            raise ValueError(f"stage {self.name!r} declares no metrics file in dvc.yaml")
        return self.metrics[0]

    def plot(self, name: str) -> str:
        """The declared plots file named ``name`` (``plots/NAME.csv``)."""
        found = [path for path in self.plots if Path(path).stem == name]
        if not found:
            raise KeyError(f"stage {self.name!r} declares no plot {name!r} in dvc.yaml; it declares {self.plots}")
        return found[0]


def resolve_stages(root: Path) -> dict[str, dict[str, Any]]:
    """Every stage of dvc.yaml with DVC's own templating applied, in declaration order.

    ``foreach``/``matrix`` groups expand to ``group@key`` stages with ``${item...}``/``${key}``
    substituted, exactly as `dvc repro` sees them (DVC's resolver, not a re-implementation).
    """
    from dvc.exceptions import DvcException
    from dvc.fs import LocalFileSystem
    from dvc.parsing import DataResolver

    dvc_file = root / "dvc.yaml"
    if not dvc_file.is_file():
        raise FileNotFoundError(f"{dvc_file}: not found; run from the project root")
    # The resolver needs only a filesystem (for vars files and params.yaml) and the parsing config.
    repo = SimpleNamespace(fs=LocalFileSystem(), config={})
    try:  # a hand edit gone wrong: name the file, not the parser's input buffer
        resolver = DataResolver(repo, str(root.resolve()), yaml.safe_load(dvc_file.read_text()) or {})
        return resolver.resolve()["stages"]
    except (yaml.YAMLError, DvcException) as error:
        raise ConfigError(f"{dvc_file}: cannot be read as a DVC pipeline: {error}") from error


def read_spec(root: Path, name: str) -> StageSpec:
    stages = resolve_stages(root)
    if name not in stages:
        raise KeyError(f"stage {name!r} is not in {root / 'dvc.yaml'}; known stages: {', '.join(stages)}")
    raw = stages[name]
    keys: list[str] = []
    for entry in raw.get("params", []):
        keys += [entry] if isinstance(entry, str) else [k for values in entry.values() for k in values]

    def paths(items: list[Any]) -> list[str]:  # unique, in order (an arm may name one folder twice)
        return list(dict.fromkeys(item if isinstance(item, str) else next(iter(item)) for item in items))

    persisted = [path for item in raw.get("outs", []) if isinstance(item, dict) for path, opts in item.items() if (opts or {}).get("persist")]
    return StageSpec(
        name=name, params=keys, deps=paths(raw.get("deps", [])), outs=paths(raw.get("outs", [])),
        metrics=paths(raw.get("metrics", [])), plots=paths(raw.get("plots", [])), persisted=persisted,
    )


def used_params(spec: StageSpec, params: Params) -> dict[str, Any]:
    """The values of the params keys the stage declares in dvc.yaml."""
    plain = params.model_dump(mode="json", by_alias=True)
    return {key: select(plain, key) for key in spec.params}


def input_paths(root: Path, spec: StageSpec) -> dict[str, Path]:
    """The stage's data and model deps (its source files are tracked by git and DVC instead)."""
    return {dep: root / dep for dep in spec.deps if not dep.startswith("src/")}


def require_inputs(spec: StageSpec, inputs: Mapping[str, Path]) -> None:
    """Refuse to start without an upstream output, naming it and the stage that makes it."""
    missing = [name for name, path in inputs.items() if not path.exists()]
    if missing:
        raise StageError(f"stage {spec.name}: missing input(s) {', '.join(missing)}; run `dvc repro {spec.name}` "
                         "to make them first")


def check_model_files(inputs: Mapping[str, Path]) -> None:
    """Refuse a truncated or corrupt safetensors file among the inputs, by name, before it is
    loaded: its header must parse and its tensors must end exactly where the file does."""
    for path in inputs.values():
        for file in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path] if path.suffix == ".safetensors" else []:
            problem = _safetensors_problem(file)
            if problem:
                raise CheckpointError(f"{file}: {problem}; rerun the stage that writes it (`dvc repro --force STAGE`)")


def _safetensors_problem(file: Path) -> str | None:
    size = file.stat().st_size
    with file.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 2 or 8 + length > size:
            return "truncated or not a safetensors file (bad header length)"
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "corrupt safetensors header"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if 8 + length + max(ends, default=0) != size:
        return f"truncated or padded: {size} bytes where the header describes {8 + length + max(ends, default=0)}"
    return None


def pipeline_lock(root: Path) -> FileLock | None:
    """The project's pipeline lock, taken for a stage run directly (not by the flow, which holds it
    already): a stage beside a running pipeline would race it over the same outputs. None for a
    folder that is no DVC project (a study's run folder)."""
    if os.environ.get(tracking.PARENT_RUN_ENV) or not (root / ".dvc").is_dir():
        return None
    (root / PIPELINE_LOCK).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / PIPELINE_LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise StageError(f"a selftok pipeline is running in {root} (lock {PIPELINE_LOCK}); wait for it to finish "
                         "rather than run a stage beside it") from None
    return lock


def resume_fingerprint(used: Mapping[str, Any], hashes: Mapping[str, str]) -> dict[str, Any]:
    """What a checkpoint folder must have been made from to be resumed: the training params
    (declared keys minus NON_TRAINING_KEYS below the top level) and the input hashes."""

    def training(node: Any) -> Any:
        return {k: training(v) for k, v in node.items() if k not in NON_TRAINING_KEYS} if isinstance(node, dict) else node

    return {"params": params_hash({key: training(value) for key, value in used.items()}), "inputs": dict(hashes)}


def guard_checkpoints(root: Path, spec: StageSpec, fingerprint: Mapping[str, Any]) -> None:
    """Resume state is valid only for the inputs that made it.

    A persisted ``checkpoints/`` folder records the ``resume_fingerprint`` of its run. When it
    differs (new recipe, new upstream model or data), resuming would silently continue the
    old run (a new pretrained VLM would be ignored by RL), so the folder is moved to
    ``FOLDER.stale`` (replacing an older one) and the stage starts fresh; an interrupted run with
    the same inputs resumes.
    """
    for out in spec.persisted:
        if not out.startswith(CHECKPOINTS_DIR):
            continue
        folder, record = root / out, root / out / INPUTS_RECORD
        if folder.is_dir() and any(folder.iterdir()):
            recorded = json.loads(record.read_text()) if record.is_file() else None
            if recorded != fingerprint:
                stale = folder.with_name(folder.name + ".stale")
                shutil.rmtree(stale, ignore_errors=True)
                folder.rename(stale)
                log.warning("stage %s: %s was made from other inputs; moved to %s, starting fresh", spec.name, out, stale.name)
        folder.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(".partial")  # replaced in one step: other ranks poll this record
        partial.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n")
        partial.replace(record)


def await_checkpoint_guard(root: Path, spec: StageSpec, fingerprint: Mapping[str, Any], timeout: float = 600.0) -> None:
    """On a worker rank: wait until rank 0 has run ``guard_checkpoints`` for this run.

    Workers resume from the same folders as rank 0; one that read a checkpoint rank 0 was about
    to set aside would continue the old run while rank 0 starts fresh. Rank 0 writes each
    folder's record last, so a record equal to this run's fingerprint means the folder is settled.
    """
    deadline = time.monotonic() + timeout
    for out in spec.persisted:
        if not out.startswith(CHECKPOINTS_DIR):
            continue
        record = root / out / INPUTS_RECORD
        while not _recorded(record, fingerprint):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stage {spec.name}: rank 0 did not record {out}/{INPUTS_RECORD} for this run within {timeout:.0f}s")
            time.sleep(0.2)


def _recorded(record: Path, fingerprint: Mapping[str, Any]) -> bool:
    try:
        return bool(json.loads(record.read_text()) == fingerprint)
    except (FileNotFoundError, json.JSONDecodeError):
        return False


def write_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a scratch file and a rename: a full disk or a kill leaves the old
    file or none, never a truncated one that DVC or a later stage would take as the output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.partial")
    try:
        scratch.write_text(text)
        scratch.replace(path)
    finally:
        scratch.unlink(missing_ok=True)


@dataclass
class StageContext:
    """What a stage's logic gets: the project root, typed params, and logging helpers."""

    name: str
    root: Path
    params: Params
    spec: StageSpec
    run_id: str = ""
    tracked: bool = True  # False on the non-main ranks of a multi-process launch
    started: float = field(default_factory=time.perf_counter)
    loop_seconds: float | None = None  # a training loop's own time, as the stage logs it (LOOP_SECONDS)

    def path(self, relative: str | Path) -> Path:
        return self.root / relative

    def write_plot(self, name: str, rows: list[dict[str, Any]]) -> None:
        """The CSV of the plot ``name`` the stage declares, one column per key of the rows."""
        out = self.path(self.spec.plot(name))
        out.parent.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for row in rows for k in row)) or ["step"]
        scratch = out.with_name(f".{out.name}.partial")
        with scratch.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        scratch.replace(out)

    def logger(self, prefix: str) -> LogFn:
        """A training loop's ``on_log``: its rows as metrics under ``prefix``, at their step."""
        return lambda step, logs: self.log_metrics({prefix: logs}, step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        flat = {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.loop_seconds = next((flat[k] for k in LOOP_SECONDS if k in flat), self.loop_seconds)
        if flat and self.tracked:
            mlflow.log_metrics(flat, step=step)

    def set_tag(self, key: str, value: str) -> None:
        if self.tracked:
            mlflow.set_tag(key, value)

    def log_image(self, image: Any, artifact_file: str) -> None:
        if self.tracked:
            mlflow.log_image(image, artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file, or a folder's contents under ``artifact_path``."""
        if self.tracked:
            (mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact)(str(path), artifact_path)


StageFn = Callable[[StageContext], Metrics]


def stage_function(name: str) -> StageFn:
    try:
        module = importlib.import_module(f"selftok.stages.{name}")
    except ModuleNotFoundError as error:
        if error.name == f"selftok.stages.{name}":
            raise KeyError(f"no stage module selftok.stages.{name}") from None
        raise
    return module.run


def run_stage(name: str, root: Path = Path("."), params_file: str = PARAMS_FILE) -> Metrics:
    """Run one stage under the contract and return its metrics (also written to metrics/NAME.json)."""
    root = root.resolve()
    params = load_params(root / params_file)  # fails before any work if params are invalid
    spec = read_spec(root, name)
    fn = stage_function(spec.group)  # imports the stage module: its libraries are most of a stage's start-up
    used = used_params(spec, params)
    ctx = StageContext(name=name, root=root, params=params, spec=spec)
    import torch  # here, not at import: the flow and the CLI read stage specs without torch

    ready = time.time()
    torch.manual_seed(params.seed)  # weight initialisation and anything else drawn from torch's global generator
    require_inputs(spec, input_paths(root, spec))
    check_model_files(input_paths(root, spec))
    hashes = tracking.input_hashes(input_paths(root, spec))
    fingerprint = resume_fingerprint(used, hashes)
    if os.environ.get("RANK", "0") != "0":  # accelerate/torchrun worker: rank 0 alone tracks and writes
        ctx.tracked = False
        await_checkpoint_guard(root, spec, fingerprint)
        return fn(ctx)
    lock = pipeline_lock(root)
    try:
        guard_checkpoints(root, spec, fingerprint)
        metrics = _tracked_run(ctx, fn, used, hashes)
        record_stage_time(root, name, ready, ctx.loop_seconds)
        return metrics
    finally:
        if lock is not None:
            lock.release()


def process_started() -> float | None:
    """When this process started (epoch seconds), or None where psutil cannot tell."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # a missing or failing psutil only loses the start-up time
        return None


def record_stage_time(root: Path, name: str, ready: float, loop_seconds: float | None) -> None:
    """Write the stage process's own time to STAGE_TIMES/NAME.json (in a DVC project only):
    ``seconds`` from the process's start (or, where that is unknown, from ``ready``) to now,
    ``startup_seconds`` until ``ready`` (interpreter, the stage module's imports, params and spec),
    ``train_seconds`` its training loop's (None: the stage logs none); the rest is loading,
    evaluation and saving. Whatever the flow sees beyond ``seconds`` is orchestration."""
    if not (root / ".dvc").is_dir():
        return
    finished, started = time.time(), process_started()
    record = {"stage": name, "ready": ready, "finished": finished, "seconds": finished - (started or ready),
              "startup_seconds": ready - started if started is not None else None, "train_seconds": loop_seconds}
    write_atomic(root / STAGE_TIMES / f"{name}.json", json.dumps(record, indent=1) + "\n")


def _tracked_run(ctx: StageContext, fn: StageFn, used: dict[str, Any], hashes: dict[str, str]) -> Metrics:
    """The stage under its MLflow run; an unreachable or unwritable store fails the stage by name
    before its metrics file is written, so DVC records nothing and a rerun redoes the stage."""
    out = ctx.root / ctx.spec.metrics_file
    out.unlink(missing_ok=True)  # a running or failed stage shows no numbers from an earlier run as its own
    system_metrics = ctx.name.startswith(("train", "pretrain", "rl"))
    experiment = ctx.params.tracking.experiment
    try:
        with tracking.stage_run(ctx.root, experiment, ctx.name, used, params_hash(used), hashes, system_metrics) as run:
            ctx.run_id = run.info.run_id
            log.info("stage %s: started (MLflow run %s)", ctx.name, ctx.run_id)
            metrics = fn(ctx)
            ctx.log_metrics(metrics)
            mlflow.log_metric("stage_seconds", time.perf_counter() - ctx.started)
            write_atomic(out, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    except MlflowException as error:
        out.unlink(missing_ok=True)
        raise StageError(f"stage {ctx.name}: the MLflow store {tracking.tracking_uri(ctx.root)} failed: "
                         f"{str(error).splitlines()[0]}; its outputs are not recorded, rerun when the store is back") from error
    log.info("stage %s: done in %.1fs", ctx.name, time.perf_counter() - ctx.started)
    return metrics
