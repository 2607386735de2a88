"""Stage `validate`: the shards -> the accepted manifest and quarantine list + the validation report and GX project.

Only accepted samples reach later stages (they read ``data/accepted/manifest.parquet``). A few
bad samples are quarantined with a warning; more than ``validate.max_bad_fraction`` of them,
or a failed table-level expectation, stops the pipeline with counts and named samples.
Outs hold no timings, run ids or absolute paths, so the same shards give the same bytes; only
the GX project under data/validation/gx (uncached) carries GX's own ids and timestamps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from selftok import paths
from selftok.data.dataset import ACCEPTED_MANIFEST
from selftok.data.manifest import SHARD_MANIFEST
from selftok.data.validation import (
    QUARANTINE,
    REASON_KINDS,
    REPORT,
    ValidationResult,
    contract_report,
    generator_repeats,
    summarise,
    validate_manifest,
)
from selftok.errors import DataContractError
from selftok.stages.base import Metrics, StageContext

log = logging.getLogger(__name__)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _warn(result: ValidationResult) -> None:
    log.warning("validate: quarantined samples (below max_bad_fraction)\n%s", summarise(result))
    table = Table(title="validate: quarantined samples by reason")
    table.add_column("reason")
    table.add_column("samples", justify="right")
    for kind, count in result.reason_counts.items():
        if count:
            table.add_row(kind, str(count))
    Console(stderr=True).print(table)


def run(ctx: StageContext) -> Metrics:
    params = ctx.params.validate_
    manifest_path = ctx.path(SHARD_MANIFEST)
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: shard manifest not found; run `dvc repro ingest` first")
    result = validate_manifest(pd.read_parquet(manifest_path), ctx.root, ctx.params.data, params, ctx.path(paths.VALIDATION))

    summary = contract_report(result, ctx.root, params.max_bad_fraction)
    ctx.path(REPORT).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    accepted = ctx.path(ACCEPTED_MANIFEST)
    accepted.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(ctx.path(QUARANTINE), result.quarantine)
    ctx.log_artifact(ctx.path(QUARANTINE), "validation")
    ctx.log_artifact(ctx.path(REPORT), "validation")
    if not summary["passed"]:
        accepted.unlink(missing_ok=True)  # a failed contract leaves nothing for later stages to read
        why = [f"{len(result.table_failures)} table-level expectation(s) failed"] if result.table_failures else []
        if result.bad_fraction > params.max_bad_fraction:
            why.append(f"{result.bad_fraction:.2%} of samples bad, over validate.max_bad_fraction {params.max_bad_fraction:.2%}")
            if hint := generator_repeats(result, ctx.params.data.source):
                why.append(hint)
        raise DataContractError(
            f"data contract failed: {'; '.join(why)} (report {REPORT}, Data Docs {summary['data_docs']}):\n{summarise(result)}"
        )
    if result.n_quarantined:
        _warn(result)
    result.accepted.to_parquet(accepted, index=False)

    return {
        "n_checked": result.n_checked,
        "n_accepted": len(result.accepted),
        "n_quarantined": result.n_quarantined,
        "bad_fraction": result.bad_fraction,
        "quarantined_by_reason": {kind: result.reason_counts[kind] for kind in REASON_KINDS},
        "n_shards_unreadable": len(result.shard_errors),
        "val_fraction": result.observed["val_fraction"],
        "splits": result.split_counts,
    }
