"""`selftok serve`: the champion VLM over HTTP on 127.0.0.1, served the MLflow way.

It runs ``mlflow models serve -m models:/selftok-vlm@champion --env-manager local`` against the
project's store, so what answers is exactly the registered version (its weights, its tokenizer
and renderer, its pyfunc code in selftok.mlflow_model). Request formats: that module's docstring.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from selftok.commands.common import Root, console, fail

HOST = "127.0.0.1"  # never another interface: the server has no authentication


def serve_command(model_uri: str, port: int, workers: int) -> list[str]:
    """The `mlflow models serve` command line of one registered model on 127.0.0.1."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "--host", HOST, "--port", str(port), "--workers", str(workers)]


def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5001,
    model: Annotated[str, typer.Option(help="Registered model name.")] = "selftok-vlm",
    alias: Annotated[str, typer.Option(help="Registry alias to serve (champion, challenger).")] = "champion",
    workers: Annotated[int, typer.Option(help="Server worker processes (each loads the model).")] = 1,
    root: Root = Path("."),
) -> None:
    """Serve a registered VLM (default selftok-vlm@champion) on 127.0.0.1 until Ctrl-C.

    POST /invocations {"prompt": "a photo of two red circles", "n": 4} returns base64 PNGs;
    {"inputs": {"image": "<base64 PNG>"}} returns a caption; GET /ping answers when it is ready.
    """
    import mlflow

    from selftok import tracking

    project = root.resolve()
    uri = tracking.tracking_uri(project)
    if uri == tracking.project_store_uri(project):
        if not (project / "mlruns" / "mlflow.db").is_file():
            fail(f"{project / 'mlruns'}: no MLflow store here; run the pipeline (or pass --root)")
        tracking.relocate_store(project)  # a copied project serves its own registry's files
    mlflow.set_tracking_uri(uri)
    version = tracking.alias_version(model, alias)
    if version is None:
        fail(f"{model}@{alias}: no such registered model or alias in {uri}; `selftok status` lists the aliases")
    model_uri = f"models:/{model}@{alias}"
    console.print(f"serving {model_uri} (version {version}) on http://{HOST}:{port}/invocations (store {uri})")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    os.execvpe(sys.executable, serve_command(model_uri, port, workers), env)
