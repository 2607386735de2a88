"""The `selftok` command: stages (what dvc.yaml calls), the pipeline, profiles and tools."""

from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from selftok.commands import status as status_commands
from selftok.commands import tokenizer as tokenizer_commands
from selftok.commands import vlm as vlm_commands
from selftok.commands.common import console, fail, setup_logging
from selftok.commands.study import study_app
from selftok.config import PARAMS_FILE, Params, load_params
from selftok.errors import ConfigError
from selftok.progress import STAGE_STATUS, report_to

if TYPE_CHECKING:
    from selftok.stages.arms import Arm

app = typer.Typer(help="Selftok pipeline: data, tokenizer, AR VLM, RL and evaluation.", no_args_is_help=True)
profile_app = typer.Typer(help="Params profiles (same schema as params.yaml) under profiles/.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")
bench_app = typer.Typer(help="Speed benchmarks, merged into metrics/bench.json.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(study_app, name="study")
app.command("status")(status_commands.status)
app.command("serve")(importlib.import_module("selftok.commands.serve").serve)
app.command("generate")(vlm_commands.generate)
app.command("caption")(vlm_commands.caption)
bench_app.command("vlm")(vlm_commands.bench_vlm)
app.command("encode")(tokenizer_commands.encode)
app.command("decode")(tokenizer_commands.decode)
app.command("reconstruct")(tokenizer_commands.reconstruct)
bench_app.command("tokenizer")(tokenizer_commands.bench_tokenizer)

Root = Annotated[Path, typer.Option("--root", help="Project root (holds params.yaml and dvc.yaml).")]
ArmName = Annotated[str, typer.Option("--arm", help="Tokenizer arm: selftok or spatial (the control).")]


def _arm(name: str) -> Arm:
    from selftok.stages.arms import ARMS

    if name not in ARMS:
        fail(f"no tokenizer arm {name!r}; known: {', '.join(ARMS)}")
    return ARMS[name]


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="Stage name from dvc.yaml, e.g. ingest, tokenize@spatial.")],
    root: Root = Path("."),
    params: Annotated[str, typer.Option(help="Params file, relative to the root.")] = PARAMS_FILE,
    verbose: bool = False,
) -> None:
    """Run one pipeline stage under the stage contract (this is what dvc.yaml calls).

    Prefer `dvc repro NAME`, which runs the stage only when its params, deps or code changed.
    """
    import os
    import time

    from selftok.errors import ShardError, StageError
    from selftok.stages.base import run_stage

    setup_logging(verbose)
    tracked = os.environ.get("RANK", "0") == "0"  # one status file, kept by rank 0 of a multi-process launch
    if tracked:
        report_to(root / STAGE_STATUS, stage=name, stage_started=time.time())
    try:
        metrics = run_stage(name, root, params)
    except (ConfigError, KeyError, FileNotFoundError, StageError, ShardError) as error:
        fail(str(error).strip("'\""))
    finally:
        if tracked:
            report_to(None)
    console.print_json(data=metrics, indent=2 if console.is_terminal else None)  # one line in a log


def load_flow_module(root: Path, name: str) -> ModuleType:
    """Import flows/NAME.py from the project (flows/ is a top-level folder beside src/)."""
    if not (root / "flows" / f"{name}.py").is_file():
        fail(f"{root / 'flows' / name}.py: flow file not found; run from the project root or pass --root")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"flows.{name}")


def prefect_env(root: Path) -> None:
    """Keep Prefect's state in the project and give its temporary server time to start."""
    import os

    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")


Profile = Annotated[str | None, typer.Option("--profile", help="Use profile NAME (profiles/NAME.yaml over the defaults) instead of a file.")]


def _params_of(root: Path, path: Path, profile: str | None) -> Params:
    """The params of ``profile`` when given, else of the file ``path``; a bad key fails by name."""
    from selftok.config import parse_params, profile_data

    try:
        return parse_params(profile_data(root, profile), f"profile {profile}") if profile else load_params(path)
    except ConfigError as error:
        fail(str(error))


def dry_run(root: Path, params: Params, as_json: bool) -> None:
    """Print the stage plan with each model's size, memory per GPU and FLOPs; nothing runs."""
    import json

    from selftok.commands.plan import format_plan, plan_rows
    from selftok.stages.base import resolve_stages

    try:
        text = json.dumps(plan_rows(params), indent=1) + "\n" if as_json else format_plan(params, list(resolve_stages(root)))
    except ConfigError as error:
        fail(str(error))
    typer.echo(text, nl=False)


@app.command()
def run(
    root: Root = Path("."),
    stages: Annotated[list[str] | None, typer.Option("--stage", help="Run only these stages (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Rerun stages even when DVC sees no change.")] = False,
    dry: Annotated[bool, typer.Option("--dry-run", help="Only print the plan: stages, parameters, memory per GPU, FLOPs.")] = False,
    profile: Profile = None,
    as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: the plan's rows as JSON.")] = False,
) -> None:
    """Run the whole pipeline: a Prefect flow with one task per DVC stage (unchanged stages skip)."""
    setup_logging()
    params = _params_of(root, root / PARAMS_FILE, profile)
    if dry:
        dry_run(root, params, as_json)
        return
    if profile:
        fail(f"--profile {profile} only plans (--dry-run); `selftok profile use {profile}` makes it the params of a run")
    prefect_env(root.resolve())
    pipeline = load_flow_module(root.resolve(), "pipeline")
    pipeline.pipeline(root=str(root.resolve()), stages=stages, force=force)


@bench_app.command("tokenize")
def bench_tokenize(
    root: Root = Path("."),
    workers: Annotated[list[int] | None, typer.Option("--workers", help="Worker counts to time (repeatable).")] = None,
    arm: ArmName = "selftok",
) -> None:
    """Re-tokenisation images/s at 1 and 2 worker processes -> metrics/bench.json (merged).

    Encodes the accepted train shards into a temporary folder, so data/codes is untouched.
    """
    import functools
    import tempfile
    import time

    from selftok.commands.common import merge_bench
    from selftok.data.retokenize import plan, run_jobs
    from selftok.hashing import file_hash

    setup_logging()
    batch = load_params(root / PARAMS_FILE).tokenize.batch_size
    tokenizer_arm = _arm(arm)
    jobs = [j for j in plan(root, file_hash(root / tokenizer_arm.tokenizer), tokenizer_arm.codes) if j.target.parent.name == "train"]
    images = sum(len(j.keys) for j in jobs)
    results = {}
    for count in workers or [1, 2]:
        with tempfile.TemporaryDirectory() as tmp:
            moved = [type(j)(j.source, Path(tmp) / j.target.name, j.keys, j.tokenizer_digest) for j in jobs]
            started = time.perf_counter()
            run_jobs(moved, functools.partial(tokenizer_arm.load_tokenizer, root), batch, count)
            results[f"tokenize_images_per_s_{count}_workers" + ("" if arm == "selftok" else f"_{arm}")] = images / (time.perf_counter() - started)
    console.print_json(data=results)
    console.print(f"merged into {merge_bench(root, results)}")


@bench_app.command("pipeline")
def bench_pipeline(
    root: Root = Path("."),
    params: Annotated[str, typer.Option(help="Params file, relative to the root.")] = PARAMS_FILE,
    profile: Profile = None,
    steps: Annotated[int, typer.Option(min=1, help="Timed optimizer steps per stage.")] = 5,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed steps before them (the first is slow).")] = 1,
    threads: Annotated[int | None, typer.Option(min=1, help="torch threads (absent: torch's default).")] = None,
    stages: Annotated[list[str] | None, typer.Option("--stages", help="Only these training stages (repeatable or comma-separated).")] = None,
    imports: Annotated[bool, typer.Option(help="Also time each stage process's start-up (a fresh interpreter's imports).")] = True,
) -> None:
    """Each training stage's steps/s, GFLOP/s and share of the measured matmul peak, its data vs
    compute time and its start-up -> metrics/bench.json ("pipeline", merged); the table on stdout.

    Models and batches are built the way each stage builds them, at the params' shapes, from fresh
    weights and random images (speed depends on neither); nothing upstream has to exist.
    """
    from selftok.commands.common import merge_bench
    from selftok.studies.throughput import STAGES, table
    from selftok.studies.throughput import bench_pipeline as run_bench

    setup_logging()
    chosen = [s for item in stages or [",".join(STAGES)] for s in item.split(",") if s]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        fail(f"not a training stage: {', '.join(unknown)}; known: {', '.join(STAGES)}")
    loaded = _params_of(root, root / params, profile)

    def done(stage: str, result: dict) -> None:
        what = result.get("not_measured") or f"{result['steps_per_s']:.3g} steps/s, {result['peak_share']:.1%} of the matmul peak"
        console.print(f"{stage}: {what}", soft_wrap=True, highlight=False)

    result = run_bench(loaded, chosen, steps, warmup, threads, imports, on_stage=done)
    path = merge_bench(root, {"pipeline": result})
    typer.echo(table(result), nl=False)
    console.print(f"merged into {path}")


@app.command("check-codes")
def check_codes(
    shard: Annotated[Path, typer.Argument(help="A code shard, e.g. data/codes/val/shard-000000.tar.")],
    out: Annotated[Path, typer.Option(help="Where to write the grid.")] = Path("check-codes.png"),
    limit: Annotated[int, typer.Option(help="How many samples to show.")] = 32,
    root: Root = Path("."),
    arm: ArmName = "selftok",
) -> None:
    """Write a grid of originals beside their decoded codes (renderer) and print the PSNR.

    The first thing to look at when an AR model produces garbage: if these pairs disagree,
    the codes (or their order) are wrong, not the AR model.
    """
    import torch

    from selftok.data.codes import codes_from_bytes
    from selftok.data.dataset import accepted_manifest, decode_png, to_uint8, to_unit
    from selftok.data.shards import read_samples
    from selftok.errors import ShardError
    from selftok.tokenizer.metrics import psnr_8bit
    from selftok.viz import image_grid

    setup_logging()
    try:
        samples = list(read_samples(shard))[:limit]
        tokenizer = _arm(arm).load_tokenizer(root, with_renderer=True)
        where = accepted_manifest(root).set_index("key")["shard"]
    except (ShardError, FileNotFoundError) as error:
        fail(str(error))
    if not samples:
        fail(f"{shard}: no samples")
    originals: dict[str, bytes] = {}
    for source in sorted({where[s["__key__"]] for s in samples}):
        originals |= {s["__key__"]: s["png"] for s in read_samples(root / source)}
    codes = torch.stack([torch.from_numpy(codes_from_bytes(s["codes.npy"], f"{shard}:{s['__key__']}")) for s in samples])
    images = torch.stack([torch.from_numpy(decode_png(originals[s["__key__"]])).permute(2, 0, 1) for s in samples])
    rendered = tokenizer.render(codes)
    value = float(psnr_8bit(rendered, to_unit(images)).mean())
    image_grid(torch.stack([images, to_uint8(rendered)], 1).flatten(0, 1), columns=16, scale=4).save(out)
    console.print(f"{len(samples)} samples, renderer PSNR {value:.2f} dB (8-bit); grid (original, decoded pairs): {out}")


@app.command()
def ui(root: Root = Path("."), port: int = 5000) -> None:
    """Start the MLflow UI on 127.0.0.1 against the project store (Ctrl-C stops it)."""
    import os

    from selftok import tracking

    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    uri = tracking.tracking_uri(root.resolve())
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {uri})")
    os.execvpe(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                "--host", "127.0.0.1", "--port", str(port)], env)


@app.command()
def schedule(
    cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 3 * * *' (03:00 daily).")] = "0 3 * * *",
    root: Root = Path("."),
    port: Annotated[int, typer.Option(help="Port of the local Prefect server started when none is configured.")] = 4200,
) -> None:
    """Serve scheduled retraining (flows/retrain.py) until Ctrl-C.

    Uses the Prefect server in PREFECT_API_URL; without one, starts a local server on
    127.0.0.1 for as long as this command runs. The schedule stays active after it stops.
    """
    import os
    import subprocess
    import time
    import urllib.request

    setup_logging()
    project = root.resolve()
    prefect_env(project)
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        api = f"http://127.0.0.1:{port}/api"
        server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            server.terminate()
            fail(f"local Prefect server did not answer on {api} within 120 s")
        os.environ["PREFECT_API_URL"] = api
        console.print(f"started a local Prefect server: UI on http://127.0.0.1:{port}")
    try:
        retrain = load_flow_module(project, "retrain").retrain
        retrain.serve(name="selftok-retrain", cron=cron, parameters={"root": str(project)}, pause_on_shutdown=False)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


@app.command()
def report(root: Root = Path(".")) -> None:
    """Rebuild reports/index.html from the last evaluate run and print where it is."""
    import json

    from selftok import tracking
    from selftok.eval.report import build_report
    from selftok.paths import REPORTS

    metrics_file = root / "metrics" / "evaluate.json"
    if not metrics_file.is_file():
        fail(f"{metrics_file}: not found; run `dvc repro evaluate` first")
    experiment = load_params(root / PARAMS_FILE).tracking.experiment
    tracking.configure(root.resolve(), experiment)
    index = build_report(root.resolve() / REPORTS, json.loads(metrics_file.read_text()), experiment)
    console.print(f"report: {index}")


@app.command("check-params")
def check_params(
    path: Annotated[Path, typer.Argument(help="Params file (or a profile overlay) to check.")] = Path(PARAMS_FILE),
    profile: Profile = None,
    root: Root = Path("."),
) -> None:
    """Validate a params file (or a profile) against the schema and exit non-zero naming every bad key."""
    _params_of(root, path, profile)
    console.print(f"[green]{f'profile {profile}' if profile else path}: ok[/]")


@profile_app.command("list")
def profile_list(root: Root = Path(".")) -> None:
    """List the profiles: the default (the schema's defaults) and the overlays in profiles/."""
    from selftok.config import profile_header, profile_names

    for name in profile_names(root):
        console.print(f"[bold]{name}[/]  {profile_header(root, name)[0]}", soft_wrap=True)


@profile_app.command("show")
def profile_show(name: str, root: Root = Path(".")) -> None:
    """Print profile NAME as a full params file: the default with its overlay merged in, commented."""
    from selftok.config import profile_yaml

    try:
        typer.echo(profile_yaml(root, name), nl=False)
    except ConfigError as error:
        fail(str(error))


@profile_app.command("use")
def profile_use(
    name: str,
    root: Root = Path("."),
    force: Annotated[bool, typer.Option(help="Overwrite params.yaml even if it differs from every profile.")] = False,
) -> None:
    """Write profile NAME (merged and commented) as params.yaml; the old one is kept as params.yaml.bak.

    Refuses when params.yaml holds edits found in no profile, unless --force: switching never
    discards your changes behind your back.
    """
    from selftok.config import profile_data, profile_names, profile_yaml

    target = root / PARAMS_FILE
    try:
        text = profile_yaml(root, name)
        if target.exists() and not force:
            current = yaml.safe_load(target.read_text())
            if all(current != profile_data(root, known) for known in profile_names(root)):
                fail(f"{target} has edits that are in no profile; pass --force (a backup goes to {target}.bak)")
    except ConfigError as error:
        fail(str(error))
    if target.exists():
        shutil.copyfile(target, target.with_name(target.name + ".bak"))
    target.write_text(text)
    console.print(f"params.yaml is now profile [bold]{name}[/] (previous in params.yaml.bak)")


if __name__ == "__main__":
    app()
