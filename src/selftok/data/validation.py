"""The data contract of ingested shards: facts read from the bytes, checked by a GX suite.

Nothing the ingest manifest claims about a sample is trusted: every shard it lists is re-read
(raw bytes, no webdataset decoders, pickled members never loaded) and per-sample facts are
computed from the bytes. A great-expectations 1.x suite then checks those facts; each failed
expectation names its samples (result format COMPLETE, indexed by ``row`` and ``key``), which
become human reasons in the quarantine list. Facts that cannot be computed (the shard is
unreadable, the sample is missing, the image does not decode) are null, and GX's map
expectations skip nulls, so a sample is blamed once, for its root cause.

The GX project is regenerated from this code on every run under ``<gx_root>/gx`` (a file
context, so nothing leaks into a temp dir); its Data Docs site is the default
``<gx_root>/gx/uncommitted/data_docs/local_site/index.html``.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import great_expectations as gx
import great_expectations.expectations as gxe
import jsonschema
import pandas as pd
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context.types.base import ProgressBarsConfig
from PIL import Image

from selftok.data.params import DataParams, ValidateParams
from selftok.data.scenes import BACKGROUNDS, CATEGORIES, COLORS, RELATIONS, SHAPES
from selftok.data.shards import pickle_members, read_samples
from selftok.data.sources import SPLITS
from selftok.errors import ShardError, SuiteError
from selftok.paths import ACCEPTED, VALIDATION

MANIFEST_COLUMNS = ("key", "split", "shard", "sha256")
QUARANTINE = Path(ACCEPTED) / "quarantine.jsonl"  # beside the accepted manifest: the samples left out, with reasons
REPORT = Path(VALIDATION) / "report.json"  # the deterministic summary of a run (contract_report)
GX_PROJECT = "gx"
SUITE_NAME = "shard_manifest"
INDEX_COLUMNS = ["row", "key"]
OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")
BAD_TEXT = "\ufffd"  # what a caption decodes to where its bytes are not UTF-8
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
# Facts per manifest row; null where a fact cannot be computed (GX map expectations skip nulls).
FACT_COLUMNS = [
    "row",
    "key",
    "split",
    "shard",
    "manifest_sha256",
    "shard_error",
    "in_shard",
    "image_error",
    "width",
    "height",
    "mode",
    "sha256",
    "caption",
    "metadata_text",
    "metadata",
    "pickle_members",
]

# Row-level reason kinds, in the order they are reported; stable names for metrics.
REASON_KINDS = (
    "shard_unreadable",
    "missing_from_shard",
    "duplicate_key",
    "unknown_split",
    "stale_manifest",
    "image_decode",
    "image_size",
    "image_mode",
    "caption_encoding",
    "caption_length",
    "metadata",
    "pickle_member",
    "duplicate_image",
)

SCENE_METADATA_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["category", "image_size", "background", "objects", "counts", "relations", "prompt"],
    "properties": {
        "category": {"enum": list(CATEGORIES)},
        "image_size": {"type": "integer", "minimum": 1},
        "background": {"enum": sorted(BACKGROUNDS)},
        "objects": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["shape", "color", "box"],
                "properties": {
                    "shape": {"enum": list(SHAPES)},
                    "color": {"enum": list(COLORS)},
                    "box": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 4},
                },
            },
        },
        "counts": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 1}},
        "relations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["a", "b", "relation"],
                "properties": {"relation": {"enum": list(RELATIONS)}},
            },
        },
        "prompt": {"type": "object", "required": ["tag", "prompt", "include", "exclude"]},
    },
}
# Folder and external-shard sources carry free-form metadata: only its shape is fixed.
OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Reason:
    kind: str
    message: str


@dataclass(kw_only=True)
class ValidationResult:
    """What validate decided: accepted manifest rows, quarantined samples with reasons, docs."""

    accepted: pd.DataFrame
    quarantine: list[dict[str, Any]]
    reason_counts: dict[str, int]
    table_failures: list[str]
    shard_errors: dict[str, str]
    split_counts: dict[str, dict[str, int]]
    docs_path: Path | None
    n_checked: int
    observed: dict[str, float] = field(default_factory=dict)

    @property
    def n_quarantined(self) -> int:
        return len(self.quarantine)

    @property
    def bad_fraction(self) -> float:
        return self.n_quarantined / self.n_checked if self.n_checked else 0.0


# --- facts from the bytes ------------------------------------------------------------------


def image_facts(data: bytes | None) -> dict[str, Any]:
    """Decode fully (``load``, not ``verify``, which misses truncated pixel data)."""
    facts: dict[str, Any] = {"image_error": None, "width": None, "height": None, "mode": None, "sha256": None}
    if data is None:
        return facts | {"image_error": "no png member"}
    facts["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse, don't allocate
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                facts |= {"width": image.width, "height": image.height, "mode": image.mode}
    except Exception as error:
        # PIL names the BytesIO object (a memory address): keep reasons deterministic.
        facts["image_error"] = OBJECT_REPR.sub("", str(error)) or type(error).__name__
    return facts


def sample_facts(sample: dict[str, bytes | str]) -> dict[str, Any]:
    """Per-sample facts; text is decoded with replacement so bad UTF-8 shows as U+FFFD."""

    def text(ext: str) -> str | None:
        value = sample.get(ext)
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else None

    metadata_text = text("json")
    try:
        json.loads(metadata_text or "")
        metadata = metadata_text
    except ValueError:
        metadata = None  # reported by the JSON-parseable expectation, not the schema one
    png = sample.get("png")
    return {
        "in_shard": True,
        **image_facts(png if isinstance(png, bytes) else None),
        "caption": (text("txt") or "").strip(),
        "metadata_text": metadata_text or "",
        "metadata": metadata,
        "pickle_members": ",".join(pickle_members(sample)),
    }


def read_shard(root: Path, shard: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Facts of every sample of one shard by key, or no facts and the error if it is unreadable."""
    path = root / shard
    found: dict[str, dict[str, Any]] = {}
    try:
        for sample in read_samples(path):
            found.setdefault(str(sample["__key__"]), sample_facts(sample))
    except ShardError as error:
        return {}, str(error).removeprefix(f"{path}: ")  # reported next to the shard name; no absolute paths
    return found, None


def collect_facts(manifest: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row of facts per manifest row (same order) and the unreadable shards with errors."""
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise SuiteError(f"manifest lacks column(s) {missing}; has {list(manifest.columns)}")
    shard_errors: dict[str, str] = {}
    by_shard: dict[str, dict[str, dict[str, Any]]] = {}
    for shard in sorted(set(manifest["shard"].astype(str))):
        by_shard[shard], error = read_shard(root, shard)
        if error is not None:
            shard_errors[shard] = error
    rows = []
    columns = (manifest[c].astype(str) for c in ("key", "split", "shard"))
    for row, (key, split, shard, claimed) in enumerate(zip(*columns, manifest["sha256"], strict=True)):
        base = {"row": row, "key": key, "split": split, "shard": shard, "manifest_sha256": claimed}
        if shard in shard_errors:
            rows.append(base | {"shard_error": shard_errors[shard]})
        else:
            rows.append(base | {"in_shard": False} | by_shard[shard].get(key, {}))
    facts = pd.DataFrame(rows).reindex(columns=FACT_COLUMNS)
    # The first occurrence of an image is kept, in split order (train, val, images) and then manifest
    # order; later copies name it. So image-only copies never displace a captioned sample.
    rank = facts["split"].map({split: i for i, split in enumerate(SPLITS)}).fillna(len(SPLITS))
    ordered = facts.assign(rank=rank).sort_values("rank", kind="stable")
    has_image = ordered["sha256"].notna()
    repeat = ordered["sha256"].duplicated(keep="first") & has_image
    first_key = ordered[has_image & ~repeat].set_index("sha256")["key"]
    duplicate_of = ordered["sha256"].where(repeat).map(first_key).reindex(facts.index)
    facts["duplicate_of"] = duplicate_of.where(duplicate_of != facts["key"])  # a key listed twice is not a copy
    # The val fraction is of the captioned data: image-only samples are no share of it (NaN is skipped).
    facts["is_val"] = (facts["split"] == "val").astype(float).where(facts["split"] != "images")
    return facts, shard_errors


# --- the suite -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One expectation, the reason kind it stands for, and how to phrase a failing row."""

    kind: str
    expectation: gxe.Expectation
    message: Callable[[pd.Series], str]


def _size(row: pd.Series, size: int) -> str:
    return f"size {int(row['width'])}x{int(row['height'])}, expected {size}x{size}"


def _mode(row: pd.Series, wanted: str) -> str:
    if row["mode"] in GRAYSCALE_MODES:
        return f"grayscale (mode {row['mode']}), expected {wanted}"
    return f"mode {row['mode']}, expected {wanted}"


def _caption(row: pd.Series, low: int, high: int) -> str:
    n = len(row["caption"])
    if n == 0:
        return "empty caption"
    return f"caption too short ({n} chars, min {low})" if n < low else f"caption too long ({n} chars, max {high})"


def _schema_message(schema: dict[str, Any], name: str) -> Callable[[pd.Series], str]:
    def message(row: pd.Series) -> str:
        errors = jsonschema.Draft202012Validator(schema).iter_errors(json.loads(row["metadata"]))
        error = jsonschema.exceptions.best_match(errors)
        if error is None:  # GX's validator disagreed with ours: still name the schema
            return f"metadata does not match the {name} schema"
        where = "/".join(str(part) for part in error.absolute_path)
        return f"metadata does not match the {name} schema ({where + ': ' if where else ''}{error.message})"

    return message


def row_checks(data: DataParams, params: ValidateParams) -> list[Check]:
    """The per-sample expectations, in reporting order."""
    return _record_checks() + _image_checks(data) + _text_checks(data, params)


def _record_checks() -> list[Check]:
    """Is the sample where the manifest says, once, in a known split, with the bytes it lists?"""
    return [
        Check("shard_unreadable", gxe.ExpectColumnValuesToBeNull(column="shard_error"), lambda r: str(r["shard_error"])),
        Check(
            "missing_from_shard",
            gxe.ExpectColumnValuesToBeInSet(column="in_shard", value_set=[True]),
            lambda r: f"listed in the manifest but not in {r['shard']}",
        ),
        Check(
            "duplicate_key",
            gxe.ExpectColumnValuesToBeUnique(column="key"),
            lambda r: f"key {r['key']!r} is listed more than once",
        ),
        Check(
            "unknown_split",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            lambda r: f"unknown split {r['split']!r}, expected one of {list(SPLITS)}",
        ),
        Check(
            "stale_manifest",
            gxe.ExpectColumnPairValuesToBeEqual(
                column_A="sha256", column_B="manifest_sha256", ignore_row_if="either_value_is_missing"
            ),
            lambda r: "manifest sha256 differs from the shard's png bytes (stale manifest?)",
        ),
    ]


def _image_checks(data: DataParams) -> list[Check]:
    """Does the image decode, at the configured size and mode?"""
    size = data.image_size
    return [
        Check(
            "image_decode",
            gxe.ExpectColumnValuesToBeNull(column="image_error"),
            lambda r: f"image does not decode ({r['image_error']})",
        ),
        Check(
            "image_size",
            gxe.ExpectColumnValuesToBeBetween(column="width", min_value=size, max_value=size),
            lambda r: _size(r, size),
        ),
        Check(
            "image_size",
            gxe.ExpectColumnValuesToBeBetween(column="height", min_value=size, max_value=size),
            lambda r: _size(r, size),
        ),
        Check("image_mode", gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=[data.mode]), lambda r: _mode(r, data.mode)),
    ]


def _text_checks(data: DataParams, params: ValidateParams) -> list[Check]:
    """Caption, metadata and members: readable, within bounds, no pickles, no repeated image."""
    low, high = params.caption_min_chars, params.caption_max_chars
    schema, schema_name = (SCENE_METADATA_SCHEMA, "scene") if data.source == "scenes" else (OBJECT_SCHEMA, "object")
    return [
        Check(
            "caption_encoding",
            gxe.ExpectColumnValuesToNotMatchRegex(column="caption", regex=BAD_TEXT),
            lambda r: "caption is not valid UTF-8",
        ),
        Check(
            "caption_length",
            gxe.ExpectColumnValueLengthsToBeBetween(column="caption", min_value=low, max_value=high),
            lambda r: _caption(r, low, high),
        ),
        Check(
            "metadata", gxe.ExpectColumnValuesToBeJsonParseable(column="metadata_text"), lambda r: "metadata is not valid JSON"
        ),
        Check(
            "metadata",
            gxe.ExpectColumnValuesToMatchJsonSchema(column="metadata", json_schema=schema),
            _schema_message(schema, schema_name),
        ),
        Check(
            "pickle_member",
            gxe.ExpectColumnValuesToBeInSet(column="pickle_members", value_set=[""]),
            lambda r: ", ".join(f"pickle member {m!r} refused (not unpickled)" for m in r["pickle_members"].split(",")),
        ),
        Check(
            "duplicate_image",
            gxe.ExpectColumnValuesToBeNull(column="duplicate_of"),
            lambda r: f"duplicate of {r['duplicate_of']}",
        ),
    ]


def table_checks(params: ValidateParams) -> dict[str, tuple[gxe.Expectation, Callable[[Any], str]]]:
    """Expectations over the whole manifest, by name; a failure stops the pipeline."""
    low, high = params.val_fraction
    return {
        "val_fraction": (
            gxe.ExpectColumnMeanToBeBetween(column="is_val", min_value=low, max_value=high),
            lambda observed: f"val fraction {observed:.3f} outside [{low}, {high}]",
        ),
    }


def run_suite(
    facts: pd.DataFrame, gx_root: Path, expectations: list[tuple[str, gxe.Expectation]], name: str = SUITE_NAME
) -> tuple[list[ExpectationValidationResult], Path | None]:
    """Run the expectations through a fresh file-context checkpoint; returns results and docs index."""
    shutil.rmtree(gx_root / GX_PROJECT, ignore_errors=True)  # the GX project is generated, never edited
    context = gx.get_context(mode="file", project_root_dir=gx_root)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.variables.save()
    batch = context.data_sources.add_pandas("shards").add_dataframe_asset("manifest").add_batch_definition_whole_dataframe("all")
    for check_id, expectation in expectations:
        expectation.meta = {"check": check_id}  # maps each result back to its Check
    # One save for the whole suite: add_expectation re-reads the project config on every call.
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=[e for _, e in expectations]))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": INDEX_COLUMNS},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": facts})
    results = [r for run in outcome.run_results.values() for r in run.results]
    broken = [r for r in results if r.exception_info.get("raised_exception")]
    if broken:
        first = broken[0]
        raise SuiteError(
            f"{len(broken)} expectation(s) raised instead of checking, e.g. "
            f"{first.expectation_config.type}: {first.exception_info.get('exception_message')}"
        )
    urls = context.get_docs_sites_urls(site_name="local_site")
    docs = Path(unquote(urlparse(urls[0]["site_url"]).path)) if urls and urls[0].get("site_url") else None
    return results, docs


# --- verdict -------------------------------------------------------------------------------


def _source_file(row: pd.Series) -> dict[str, str]:
    """{"file": path} for samples ingested from a folder, so the quarantine names the original file."""
    try:
        meta = json.loads(row.get("metadata") or "{}")
    except (TypeError, ValueError):
        return {}
    return {"file": meta["file"]} if isinstance(meta, dict) and isinstance(meta.get("file"), str) else {}


def validate_manifest(
    manifest: pd.DataFrame, root: Path, data: DataParams, params: ValidateParams, gx_root: Path
) -> ValidationResult:
    """Check every manifest row against its shard bytes; return the accepted rows and reasons."""
    if manifest.empty:
        raise SuiteError("manifest is empty: ingest wrote no samples")
    facts, shard_errors = collect_facts(manifest, root)
    checks = {f"row{i}": c for i, c in enumerate(row_checks(data, params))}
    tables = table_checks(params)
    results, docs = run_suite(
        facts, gx_root, [(k, c.expectation) for k, c in checks.items()] + [(k, e) for k, (e, _) in tables.items()]
    )

    reasons: dict[int, dict[str, Reason]] = {}
    table_failures: list[str] = []
    observed: dict[str, float] = {}
    for result in results:
        check_id = result.expectation_config.meta["check"]
        if check_id in tables:
            observed[check_id] = float(result.result["observed_value"])
            if not result.success:
                table_failures.append(tables[check_id][1](result.result["observed_value"]))
            continue
        check = checks[check_id]
        for index in result.result.get("unexpected_index_list") or []:
            row = facts.iloc[int(index["row"])]
            reasons.setdefault(int(index["row"]), {}).setdefault(check.kind, Reason(check.kind, check.message(row)))

    order = {kind: i for i, kind in enumerate(REASON_KINDS)}
    quarantine = [
        {
            "key": facts.at[row, "key"],
            "split": facts.at[row, "split"],
            "shard": facts.at[row, "shard"],
            **_source_file(manifest.iloc[row]),
            "reasons": [{"kind": r.kind, "message": r.message} for r in sorted(found.values(), key=lambda r: order[r.kind])],
        }
        for row, found in reasons.items()
    ]
    quarantine.sort(key=lambda q: (q["key"], q["shard"], q["split"]))
    counts = Counter(r["kind"] for q in quarantine for r in q["reasons"])
    accepted = manifest.iloc[[i for i in range(len(manifest)) if i not in reasons]]
    accepted = accepted.sort_values("key", kind="stable").reset_index(drop=True)
    split_counts = {
        split: {"checked": int((facts["split"] == split).sum()), "accepted": int((accepted["split"] == split).sum())}
        for split in SPLITS
    }
    return ValidationResult(
        accepted=accepted,
        quarantine=quarantine,
        reason_counts={kind: counts.get(kind, 0) for kind in REASON_KINDS},
        table_failures=table_failures,
        shard_errors=dict(sorted(shard_errors.items())),
        split_counts=split_counts,
        docs_path=docs,
        n_checked=len(facts),
        observed=observed,
    )


def contract_report(result: ValidationResult, root: Path, max_bad_fraction: float) -> dict[str, Any]:
    """The deterministic summary written to report.json (no times, no absolute paths)."""
    docs = result.docs_path.relative_to(root).as_posix() if result.docs_path and result.docs_path.is_relative_to(root) else None
    return {
        "passed": not result.table_failures and result.bad_fraction <= max_bad_fraction,
        "n_checked": result.n_checked,
        "n_accepted": len(result.accepted),
        "n_quarantined": result.n_quarantined,
        "bad_fraction": result.bad_fraction,
        "max_bad_fraction": max_bad_fraction,
        "quarantined_by_reason": result.reason_counts,
        "shard_errors": result.shard_errors,
        "table_failures": result.table_failures,
        "observed": result.observed,
        "splits": result.split_counts,
        "data_docs": docs,
    }


def generator_repeats(result: ValidationResult, source: str) -> str | None:
    """What to do when the bad samples are mostly copies made by the scene generator: it has few
    distinct one-object scenes, so copies grow with data.scenes.n_train and n_images (0.8% at
    24000 + 0, 1.0% at 24000 + 8000, 3% at 96000 + 0) and quarantining them loses nothing."""
    if source != "scenes" or 2 * result.reason_counts.get("duplicate_image", 0) < result.n_quarantined:
        return None
    return ("most are duplicate_image: the scene generator draws its one-object scenes again as data.scenes.n_train "
            "and n_images grow; the copies are dropped either way, so raise validate.max_bad_fraction or lower them")


def summarise(result: ValidationResult, limit: int = 10) -> str:
    """Counts per reason and up to ``limit`` samples with their reasons, for errors and warnings."""
    lines = [f"{result.n_quarantined} of {result.n_checked} samples quarantined ({result.bad_fraction:.2%})"]
    lines += [f"  {kind}: {n}" for kind, n in result.reason_counts.items() if n]
    lines += [f"  shard {shard}: {error}" for shard, error in result.shard_errors.items()]
    lines += [f"  table: {failure}" for failure in result.table_failures]
    shown: list[dict[str, Any]] = []
    for entry in result.quarantine:  # an example of every reason first, then in key order
        if entry["reasons"][0]["kind"] not in {e["reasons"][0]["kind"] for e in shown}:
            shown.append(entry)
    shown += [e for e in result.quarantine if all(e is not s for s in shown)][: max(0, limit - len(shown))]
    for entry in sorted(shown[:limit], key=lambda e: (e["key"], e["shard"])):
        lines.append(f"  - {entry['key']} ({entry['shard']}): " + "; ".join(r["message"] for r in entry["reasons"]))
    if result.n_quarantined > limit:
        lines.append(f"  ... and {result.n_quarantined - limit} more (see quarantine.jsonl)")
    return "\n".join(lines)
