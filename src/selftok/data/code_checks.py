"""The data contract of code shards, checked by a great-expectations suite.

Every code is within the codebook, every sample has exactly K codes, and every accepted
sample is present exactly once (each code key is accepted, keys are unique, and there are as
many rows as accepted samples). Data Docs land under ``<gx_root>/gx``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import great_expectations.expectations as gxe
import pandas as pd

from selftok.data.codes import CodeSet
from selftok.data.validation import run_suite
from selftok.errors import DataContractError


def code_facts(sets: Mapping[str, CodeSet], accepted: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    rows = []
    for split, codes in sets.items():
        wanted = set(accepted[split])
        for key, sample in zip(codes.keys, codes.codes, strict=True):
            rows.append({"key": key, "split": split, "length": int(sample.numel()), "min_code": int(sample.min()),
                         "max_code": int(sample.max()), "accepted": key in wanted})
    facts = pd.DataFrame(rows)
    facts.insert(0, "row", range(len(facts)))
    return facts


def validate_codes(
    sets: Mapping[str, CodeSet], accepted: Mapping[str, Sequence[str]], num_tokens: int, codebook_size: int, gx_root: Path
) -> dict[str, Any]:
    """Run the suite; raise DataContractError naming the failed checks and example keys."""
    facts = code_facts(sets, accepted)
    expected_rows = sum(len(keys) for keys in accepted.values())
    checks = {
        "length": gxe.ExpectColumnValuesToBeBetween(column="length", min_value=num_tokens, max_value=num_tokens),
        "min_code": gxe.ExpectColumnValuesToBeBetween(column="min_code", min_value=0, max_value=codebook_size - 1),
        "max_code": gxe.ExpectColumnValuesToBeBetween(column="max_code", min_value=0, max_value=codebook_size - 1),
        "accepted": gxe.ExpectColumnValuesToBeInSet(column="accepted", value_set=[True]),
        "unique": gxe.ExpectColumnValuesToBeUnique(column="key"),
        "count": gxe.ExpectTableRowCountToEqual(value=expected_rows),
    }
    results, docs = run_suite(facts, gx_root, list(checks.items()), name="codes")
    failures = []
    for result in results:
        if not result.success:
            examples = [i["key"] for i in (result.result.get("unexpected_index_list") or [])[:5]]
            observed = result.result.get("observed_value")
            failures.append(f"{result.expectation_config.meta['check']}: "
                            + (f"e.g. {examples}" if examples else f"observed {observed}, expected {expected_rows}"))
    if failures:
        raise DataContractError("code shards fail their contract:\n  " + "\n  ".join(failures))
    return {"checked": len(facts), "docs": str(docs) if docs else None}
