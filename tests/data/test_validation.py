"""validate: every kind of bad sample is quarantined with its reason, good ones all survive."""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image
from shard_fixtures import SIZE, Sample, png, scene_sample, write_project

from selftok.config import parse_params
from selftok.data.dataset import ACCEPTED_MANIFEST
from selftok.data.manifest import SHARD_MANIFEST
from selftok.data.params import DataParams, ValidateParams
from selftok.data.validation import QUARANTINE, REPORT, ValidationResult, generator_repeats, validate_manifest
from selftok.errors import DataContractError
from selftok.stages import validate as stage
from selftok.stages.base import StageContext, StageSpec

DATA = DataParams(image_size=SIZE)
PICKLE = pickle.dumps({"payload": "never to be loaded"})

# key -> (reason kind, exact message) for every planted bad sample (train, shard size 5).
EXPECTED: dict[str, tuple[str, str]] = {
    "train-0000001": ("image_decode", "image does not decode (cannot identify image file)"),
    "train-0000002": ("image_size", f"size 20x{SIZE}, expected {SIZE}x{SIZE}"),
    "train-0000003": ("image_mode", "grayscale (mode L), expected RGB"),
    "train-0000004": ("caption_length", "empty caption"),
    "train-0000005": ("duplicate_image", "duplicate of train-0000000"),
    "train-0000006": ("pickle_member", "pickle member 'pyd' refused (not unpickled)"),
    "train-0000007": ("metadata", "metadata does not match the scene schema (category: 3 is not one of "),
    "train-0000008": ("metadata", "metadata is not valid JSON"),
    "train-0000009": ("caption_encoding", "caption is not valid UTF-8"),
    "train-0000016": ("stale_manifest", "manifest sha256 differs from the shard's png bytes (stale manifest?)"),
    "train-0000017": ("duplicate_key", "key 'train-0000017' is listed more than once"),
    "train-0000099": ("missing_from_shard", "listed in the manifest but not in data/shards/train/shard-000003.tar"),
}
TRUNCATED = "data/shards/train/shard-000002.tar"  # holds train-0000010..14
GOOD = [
    "train-0000000",
    "train-0000015",
    "train-0000018",
    "train-0000019",
    "val-0000000",
    "val-0000001",
    "val-0000002",
    "val-0000003",
]


def bad_project(root: Path) -> pd.DataFrame:
    """Real shards with one sample of each bad kind, a truncated shard and a doctored manifest."""
    train: list[Sample] = [scene_sample("train", i) for i in range(20)]
    train[1] |= {"png": b"\x89PNG but not really"}
    train[2] |= {"png": png(Image.new("RGB", (20, SIZE)))}
    train[3] |= {"png": png(Image.new("L", (SIZE, SIZE)))}
    train[4] |= {"txt": b"   "}
    train[5] |= {"png": train[0]["png"]}
    train[6] |= {"pyd": PICKLE}
    train[7] |= {"json": json.dumps(json.loads(train[7]["json"]) | {"category": 3}).encode()}
    train[8] |= {"json": b"{not json"}
    train[9] |= {"txt": b"a photo of a red circle\xff"}
    manifest = write_project(root, {"train": train, "val": [scene_sample("val", i) for i in range(4)]}, shard_size=5)
    shard = root / TRUNCATED
    shard.write_bytes(shard.read_bytes()[:3000])
    manifest.loc[manifest["key"] == "train-0000016", "sha256"] = "0" * 64
    extra = manifest[manifest["key"] == "train-0000017"].copy()
    missing = manifest[manifest["key"] == "train-0000015"].assign(key="train-0000099")
    manifest = pd.concat([manifest, extra, missing], ignore_index=True)
    manifest.to_parquet(root / "data/shards/manifest.parquet", index=False)
    return manifest


@pytest.fixture(scope="module")
def bad_result(tmp_path_factory: pytest.TempPathFactory) -> ValidationResult:
    root = tmp_path_factory.mktemp("bad")
    manifest = bad_project(root)
    with pytest.MonkeyPatch.context() as patch:

        def refuse(*_: Any, **__: Any) -> Any:
            raise AssertionError("a pickle member was unpickled")

        patch.setattr(pickle, "loads", refuse)
        patch.setattr(pickle, "load", refuse)
        return validate_manifest(manifest, root, DATA, ValidateParams(), root / "data/validation")


def page_text(path: Path) -> str:
    """Visible text of a Data Docs page (values sit in their own tags)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", path.read_text()))


def reasons_by_key(result: ValidationResult) -> dict[str, list[tuple[str, str]]]:
    return {q["key"]: [(r["kind"], r["message"]) for r in q["reasons"]] for q in result.quarantine}


def test_each_bad_kind_is_quarantined_with_its_reason(bad_result: ValidationResult) -> None:
    found = reasons_by_key(bad_result)
    for key, (kind, message) in EXPECTED.items():
        assert [k for k, _ in found[key]] == [kind], (key, found[key])
        assert found[key][0][1].startswith(message), (key, found[key])
    assert sum(1 for q in bad_result.quarantine if q["key"] == "train-0000017") == 2  # both listings
    assert bad_result.reason_counts["duplicate_key"] == 2
    assert bad_result.docs_path is not None
    (page,) = (bad_result.docs_path.parent / "validations").rglob("*.html")
    assert "train-0000001" in page_text(page)  # Data Docs name the failing samples too


def test_truncated_shard_is_named_and_only_its_samples_quarantined(bad_result: ValidationResult) -> None:
    assert list(bad_result.shard_errors) == [TRUNCATED]
    assert "corrupt or truncated" in bad_result.shard_errors[TRUNCATED]
    assert "/tmp" not in bad_result.shard_errors[TRUNCATED]
    lost = {q["key"] for q in bad_result.quarantine if q["shard"] == TRUNCATED}
    assert lost == {f"train-{i:07d}" for i in range(10, 15)}
    assert all(q["reasons"][0]["kind"] == "shard_unreadable" for q in bad_result.quarantine if q["shard"] == TRUNCATED)


def test_no_good_sample_is_lost(bad_result: ValidationResult) -> None:
    assert list(bad_result.accepted["key"]) == GOOD
    assert bad_result.n_checked == 26 and bad_result.n_quarantined == 18
    assert bad_result.split_counts == {
        "train": {"checked": 22, "accepted": 4}, "val": {"checked": 4, "accepted": 4}, "images": {"checked": 0, "accepted": 0}
    }
    assert bad_result.table_failures == []


# --- the stage: thresholds, outputs, determinism ---------------------------------------------


def stage_ctx(root: Path, logged: list[str], **validate: Any) -> StageContext:
    params = parse_params({"data": {"image_size": SIZE}, "validate": validate})
    ctx = StageContext(name="validate", root=root, params=params, spec=StageSpec(name="validate", params=[], deps=[], outs=[]))
    ctx.log_artifact = lambda path, artifact_path=None: logged.append(Path(path).name)  # type: ignore[method-assign]
    return ctx


def test_stage_fails_above_max_bad_fraction_and_warns_below(
    tmp_path: Path, bad_result: ValidationResult, caplog: pytest.LogCaptureFixture
) -> None:
    bad_project(tmp_path)  # 18 of 26 rows bad: 0.69
    (tmp_path / ACCEPTED_MANIFEST).parent.mkdir(parents=True)
    (tmp_path / ACCEPTED_MANIFEST).write_bytes(b"from an older run")
    logged: list[str] = []
    with pytest.raises(DataContractError) as error:
        stage.run(stage_ctx(tmp_path, logged, max_bad_fraction=0.65))
    text = str(error.value)
    assert "69.23% of samples bad, over validate.max_bad_fraction 65.00%" in text
    assert "18 of 26 samples quarantined" in text and "image_decode: 1" in text and "shard_unreadable: 5" in text
    assert "train-0000001 (data/shards/train/shard-000000.tar): image does not decode" in text
    assert "... and 8 more" in text
    assert not (tmp_path / ACCEPTED_MANIFEST).exists()  # nothing left for later stages to read
    assert sorted(logged) == ["quarantine.jsonl", "report.json"]
    assert json.loads((tmp_path / REPORT).read_text())["passed"] is False
    failed_quarantine = (tmp_path / QUARANTINE).read_bytes()

    with caplog.at_level(logging.WARNING, logger="selftok.stages.validate"):
        metrics = stage.run(stage_ctx(tmp_path, [], max_bad_fraction=0.7))
    assert "duplicate of train-0000000" in caplog.text
    assert metrics["n_checked"] == 26 and metrics["n_accepted"] == len(GOOD) and metrics["n_quarantined"] == 18
    assert metrics["quarantined_by_reason"]["shard_unreadable"] == 5 and metrics["quarantined_by_reason"]["pickle_member"] == 1
    assert metrics["splits"]["val"] == {"checked": 4, "accepted": 4}
    assert json.loads((tmp_path / REPORT).read_text())["passed"] is True
    accepted = pd.read_parquet(tmp_path / ACCEPTED_MANIFEST)
    assert list(accepted["key"]) == GOOD
    assert list(accepted.columns) == list(pd.read_parquet(tmp_path / SHARD_MANIFEST).columns)

    # Same shards, independent runs: byte-identical outs (no times, ids or absolute paths).
    assert (tmp_path / QUARANTINE).read_bytes() == failed_quarantine
    other = io.BytesIO()
    bad_result.accepted.to_parquet(other, index=False)
    assert (tmp_path / ACCEPTED_MANIFEST).read_bytes() == other.getvalue()
    keys = [json.loads(line)["key"] for line in failed_quarantine.decode().splitlines()]
    assert keys == sorted(keys)


def test_table_failure_stops_clean_data_and_data_docs_land_in_the_project(tmp_path: Path) -> None:
    write_project(
        tmp_path, {"train": [scene_sample("train", i) for i in range(8)], "val": [scene_sample("val", i) for i in range(2)]}
    )
    with pytest.raises(DataContractError, match=r"val fraction 0\.200 outside \[0\.3, 0\.5\]"):
        stage.run(stage_ctx(tmp_path, [], val_fraction=[0.3, 0.5]))
    report = json.loads((tmp_path / REPORT).read_text())
    assert report["n_quarantined"] == 0 and report["n_accepted"] == 10  # every row passed; the table did not
    assert report["data_docs"] == "data/validation/gx/uncommitted/data_docs/local_site/index.html"
    assert (tmp_path / report["data_docs"]).is_file()
    pages = list((tmp_path / "data/validation/gx/uncommitted/data_docs/local_site/validations").rglob("*.html"))
    assert len(pages) == 1 and "mean must be greater than or equal to 0.3" in page_text(pages[0])


def test_image_only_copies_never_displace_captioned_samples_nor_count_as_val(tmp_path: Path) -> None:
    """"images-..." keys sort before "train-...", yet the train sample keeps its place; and the val
    fraction is of train + val (2 of 10 here, not 2 of 22)."""
    train = [scene_sample("train", i) for i in range(8)]
    images = [scene_sample("images", i) for i in range(11)] + [train[3] | {"__key__": "images-0000011"}]
    write_project(tmp_path, {"train": train, "val": [scene_sample("val", i) for i in range(2)], "images": images})
    metrics = stage.run(stage_ctx(tmp_path, [], val_fraction=[0.15, 0.5], max_bad_fraction=0.1))
    assert metrics["splits"]["images"] == {"checked": 12, "accepted": 11}
    (entry,) = (json.loads(line) for line in (tmp_path / QUARANTINE).read_text().splitlines())
    assert entry["key"] == "images-0000011" and entry["reasons"][0]["message"] == "duplicate of train-0000003"
    assert metrics["val_fraction"] == pytest.approx(0.2)


def test_quarantine_names_the_source_file_of_folder_samples() -> None:
    import pandas as pd

    from selftok.data.validation import _source_file

    assert _source_file(pd.Series({"metadata": '{"source": "folder", "file": "sub/broken.jpg"}'})) == {"file": "sub/broken.jpg"}
    assert _source_file(pd.Series({"metadata": '{"objects": []}'})) == {}
    assert _source_file(pd.Series({"metadata": "not json"})) == {}


def test_generated_copies_get_a_hint_other_failures_do_not() -> None:
    def result(duplicates: int, decode_errors: int) -> ValidationResult:
        kinds = ["duplicate_image"] * duplicates + ["image_decode"] * decode_errors
        quarantine = [{"key": f"train-{i:07d}", "shard": "s.tar", "reasons": [{"kind": k, "message": k}]} for i, k in enumerate(kinds)]
        counts = {"duplicate_image": duplicates, "image_decode": decode_errors}
        return ValidationResult(accepted=pd.DataFrame(), quarantine=quarantine, reason_counts=counts, table_failures=[], shard_errors={},
                                split_counts={}, docs_path=None, n_checked=1000)

    hint = generator_repeats(result(30, 2), "scenes")
    assert hint is not None and "data.scenes.n_train" in hint and "validate.max_bad_fraction" in hint
    assert generator_repeats(result(30, 2), "folder") is None  # real data: copies are a finding, not a hint
    assert generator_repeats(result(2, 30), "scenes") is None  # mostly broken images: no excuse
