"""The human-facing report: reports/index.html, static and self-contained beside its images.

Built from metrics/evaluate.json, the images the evaluate stage saved under reports/images/,
and the training and reward curves read back from MLflow (so the report shows exactly what
the runs logged).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from matplotlib.figure import Figure  # no pyplot: no global backend or GUI state
from mlflow.tracking import MlflowClient

from selftok.data.scenes import CATEGORIES
from selftok.nested import flatten

IMAGES = "images"  # in the report folder: what evaluate saved, and the curves
RECONSTRUCTION = "reconstruction.json"  # in the report folder: the reconstruction table
CURVES = {  # stage -> metric keys worth plotting
    "train_vae": ["train.loss"],
    "train_tokenizer": ["train.loss"],
    "train_renderer": ["train.loss"],
    "train_spatial": ["train.loss"],
    "train_evaluator": ["train.loss"],
    "pretrain_vlm@selftok": ["train.loss"],
    "pretrain_vlm@spatial": ["train.loss"],
    "rl_finetune@selftok": ["rl.reward", "rl.kl", "rl.distinct_codes"],
    "rl_finetune@spatial": ["rl.reward", "rl.kl", "rl.distinct_codes"],
}
SET_NOTES = {
    "rl_test": "Requests the VLM saw as captions in pretraining, never used by RL or its checkpoint choice (the paper's protocol).",
    "compositional": "Requests that never caption a training image, the held-out colour-shape pairs among them: composition.",
}
# What the two arms are compared on, side by side (flattened keys of each arm's metrics).
ARM_SECTIONS = ("tokenizer", "generation", "rl_gain", "diversity_reference", "data_ceiling", "comprehension", "ar_probe")


def latest_run(experiment: str, stage: str) -> Any:
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`dvc.stage` = '{stage}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def plot_curves(experiment: str, out: Path) -> list[str]:
    """One PNG per stage with its curves; returns the files written (relative to reports/)."""
    client, written = MlflowClient(), []
    for stage, keys in CURVES.items():
        run = latest_run(experiment, stage)
        if run is None:
            continue
        series = {}
        for key in run.data.metrics:
            if any(key == k or key.startswith(k + ".") for k in keys):
                history = client.get_metric_history(run.info.run_id, key)
                if len(history) > 1:
                    series[key] = ([m.step for m in history], [m.value for m in history])
        if not series:
            continue
        fig = Figure(figsize=(4 * len(series), 3))
        axes = fig.subplots(1, len(series), squeeze=False)
        for ax, (key, (steps, values)) in zip(axes[0], sorted(series.items()), strict=True):
            ax.plot(steps, values)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("step")
        fig.suptitle(stage)
        fig.tight_layout()
        path = out / f"curve_{stage.replace('@', '_')}.png"
        fig.savefig(path, dpi=90)
        written.append(path.relative_to(out.parent).as_posix())
    return written


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def side_by_side(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows metric | selftok | each control arm, for every number both arms report."""
    controls = metrics.get("control", {})
    arms = {"selftok": {k: metrics[k] for k in ARM_SECTIONS if k in metrics}} | {
        name: {k: m[k] for k in ARM_SECTIONS if k in m} for name, m in controls.items()
    }
    flat = {name: flatten(values) for name, values in arms.items()}
    keys = [k for k in flat["selftok"] if all(k in f for f in flat.values())]
    return [{"metric": k, **{name: f[k] for name, f in flat.items()}} for k in keys]


def generation_rows(metrics: dict[str, Any], prompt_set: str) -> list[dict[str, Any]]:
    """The generation table of one prompt set: per category, then the diversity, clutter and strict
    rows, for the pretrained and RL models beside real renders (the data through the tokenizer:
    what a model drawing like its data scores)."""
    generation = metrics.get("generation", {}).get(prompt_set, {})
    ceiling = metrics.get("data_ceiling", {}).get(prompt_set, {})
    reference = metrics.get("diversity_reference", {}).get(prompt_set, {})

    def models(get: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        return {m: get(generation.get(m, {})) for m in ("pretrained", "rl")}

    rows = [{"category": c, **models(lambda g, c=c: g.get(c)), "real renders": ceiling.get(c)} for c in [*CATEGORIES, "overall"]]
    return [
        *rows,
        # collapse shows as a spread far below that of real renders of the same prompts
        {"category": "feature spread per prompt", **models(lambda g: g.get("diversity", {}).get("feature_spread")),
         "real renders": reference.get("feature_spread")},
        # near-copies within a prompt show here even when codes differ and features scatter
        {"category": "pixel spread per prompt", **models(lambda g: g.get("diversity", {}).get("pixel_spread")),
         "real renders": reference.get("pixel_spread")},
        # objects beyond those asked: clutter passes GenEval's rules (docs/experiments.md, RL recipes)
        {"category": "extra objects per image", **models(lambda g: g.get("extra_objects")), "real renders": ceiling.get("extra_objects")},
        {"category": "overall, correct with no extra object", **models(lambda g: g.get("overall_strict")),
         "real renders": ceiling.get("overall_strict")},
        # the same images by the independent second judge: a gap that opens under RL is the reward being gamed
        {"category": "overall, second judge", **models(lambda g: g.get("judge", {}).get("overall")), "real renders": None},
    ]


def _control_section(metrics: dict[str, Any]) -> list[str]:
    comparison = side_by_side(metrics)
    if not comparison or len(comparison[0]) <= 2:
        return []
    return [
        "<h2>Selftok vs spatial-token control</h2>",
        "<p>Same data, K, codebook and bits per image, same VLM, RL and sampling recipe; only the tokens differ. "
        "rl_gain = RL minus pretrained GenEval-style score; entropy in nats by position (pretrained VLM, val codes).</p>",
        _table(comparison, list(comparison[0])),
    ]


def build_report(folder: Path, metrics: dict[str, Any], experiment: str) -> Path:
    """Write ``folder``/index.html from the evaluate metrics and the images and reconstruction table
    saved in ``folder``; returns its path."""
    table = json.loads((folder / RECONSTRUCTION).read_text())
    curves = plot_curves(experiment, folder / IMAGES)
    images = sorted(p.relative_to(folder).as_posix() for p in (folder / IMAGES).glob("*.png") if not p.name.startswith("curve_"))
    headline = [{"metric": k, "value": v} for k, v in sorted(flatten(metrics).items()) if isinstance(v, (int, float, str))]
    sections = [
        "<h1>Selftok pipeline report</h1>",
        "<h2>Headline</h2>",
        _table(headline, ["metric", "value"]),
        "<h2>Reconstruction by prefix (val)</h2>",
        "<p>k = number of leading tokens v1..vk visible; k = 0 is the no-token baseline. 8-bit PSNR protocol.</p>",
        _table(table, ["decoder", "k", "psnr", "ssim", "frechet_evaluator_distance", "evaluator_fidelity", "shape_agreement", "color_agreement"]),
        *[part for name in metrics.get("generation", {}) for part in (
            f"<h2>Generation: {html.escape(name)} prompts (GenEval-style)</h2>", f"<p>{html.escape(SET_NOTES.get(name, ''))}</p>",
            _table(generation_rows(metrics, name), ["category", "pretrained", "rl", "real renders"]))],
        *_control_section(metrics),
        "<h2>Promotion</h2>",
        _table([{"key": k, "value": v} for k, v in metrics.get("promotion", {}).items()], ["key", "value"]),
        "<h2>Images</h2>",
        *[f"<figure><img src='{p}'><figcaption>{html.escape(p)}</figcaption></figure>" for p in images],
        "<h2>Curves</h2>",
        *[f"<figure><img src='{p}'></figure>" for p in curves],
    ]
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}img{image-rendering:pixelated;max-width:100%}"
    )
    out = folder / "index.html"
    out.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>Selftok report</title><style>{style}</style>"
        f"</head><body>{''.join(sections)}</body></html>\n"
    )
    return out
