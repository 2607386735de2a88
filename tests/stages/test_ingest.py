import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from selftok.config import load_params
from selftok.eval.geneval import prompt_sets
from selftok.stages.base import read_spec, run_stage


def test_spec_is_read_from_dvc_yaml(project: Path) -> None:
    spec = read_spec(project, "ingest")
    assert spec.params == ["seed", "data", "geneval"]
    assert "src/selftok/stages/ingest.py" in spec.deps and spec.outs == ["data/shards"]
    with pytest.raises(KeyError, match="stage 'nope' is not in"):
        read_spec(project, "nope")


def test_ingest_is_byte_identical_and_manifest_matches(project: Path, tmp_path: Path) -> None:
    metrics = run_stage("ingest", project)
    shards = sorted((project / "data" / "shards").rglob("*.tar"))
    first = {p.relative_to(project): p.read_bytes() for p in shards}
    manifest = pd.read_parquet(project / "data" / "shards" / "manifest.parquet")
    assert metrics["n_train"] == (manifest["split"] == "train").sum() == 160
    assert metrics["n_images"] == (manifest["split"] == "images").sum() == 32
    assert set(manifest.columns) >= {"key", "split", "shard", "width", "height", "mode", "caption", "sha256", "metadata"}
    assert manifest["key"].is_unique and (manifest["width"] == 16).all() and (manifest["mode"] == "RGB").all()
    assert all(json.loads(m)["prompt"]["prompt"] == c for m, c in zip(manifest["metadata"], manifest["caption"], strict=True))
    assert json.loads((project / "metrics" / "ingest.json").read_text()) == metrics
    params = load_params(project / "params.yaml")
    heldout = {r["prompt"] for r in prompt_sets(params.data, params.seed, params.geneval)["heldout"]}
    train_captions = set(manifest.loc[manifest["split"] == "train", "caption"])
    assert heldout and not heldout & train_captions

    other = tmp_path / "again"
    subprocess.run(["cp", "-r", str(project), str(other)], check=True)
    for p in (other / "data").rglob("*.tar"):
        p.unlink()
    run_stage("ingest", other)
    assert {p.relative_to(other): p.read_bytes() for p in sorted((other / "data" / "shards").rglob("*.tar"))} == first


def test_a_failing_stage_leaves_no_earlier_metrics(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = project / "metrics" / "ingest.json"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text('{"n_train": 1}\n')

    def broken(ctx: object) -> dict:
        raise RuntimeError("disk full")

    monkeypatch.setattr("selftok.stages.base.stage_function", lambda name: broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_stage("ingest", project)
    assert not stale.exists()


def test_cli_rejects_bad_params_before_work(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("image_size: 16", "image_size: sixteen"))
    result = subprocess.run([sys.executable, "-m", "selftok", "stage", "ingest"], cwd=project, capture_output=True, text=True)
    assert result.returncode == 1
    assert "data.image_size" in result.stderr
    assert not (project / "data" / "shards").exists()
