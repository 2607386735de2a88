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
    assert spec.params == ["seed", "data", "geneval.heldout_fraction", "geneval.max_heldout_per_category"]
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
    heldout = {r["prompt"] for r in prompt_sets(params.data, params.seed, params.geneval)["compositional"]}
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


def _photo_folder(folder: Path, n: int = 30) -> Path:
    """Tiny PNGs of several sizes and modes, captioned by sidecars and a captions.jsonl."""
    from PIL import Image

    folder.mkdir()
    lines = []
    for i in range(n):
        name = f"{'sub/' if i % 3 == 0 else ''}img{i:03d}.png"
        (folder / name).parent.mkdir(exist_ok=True)
        Image.new("RGBA" if i % 4 == 0 else "RGB", (10 + i % 7, 12 + i % 5), (i * 8, 255 - i * 8, i * 3)).save(folder / name)
        if i % 2:
            (folder / name).with_suffix(".txt").write_text(f"sidecar caption {i}\n")
        else:
            lines.append(json.dumps({"file": name, "caption": f"listed caption {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_folder_mapped_on_a_two_worker_cluster_gives_the_same_shards_and_manifest(tmp_path: Path, prefect_server: None) -> None:
    from selftok.data.params import DataParams, FolderSource
    from selftok.stages.ingest import map_folder, preview_images, write_split

    data = DataParams(source="folder", image_size=8, shard_size=4, folder=FolderSource(path=_photo_folder(tmp_path / "photos"), val_fraction=0.2))
    shards, rows = {}, {}
    for how in ("single", "mapped"):
        folder = tmp_path / how / "data" / "shards"
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "shard-000099.tar").write_bytes(b"stale")  # an earlier ingest's extra shard goes
        if how == "single":
            rows[how] = [r for split in ("train", "val", "images") for r in write_split(data, split, folder / split, frozenset())]
        else:
            rows[how] = map_folder(data, folder, workers=2)
        shards[how] = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    n_train = sum(r["split"] == "train" for r in rows["single"])
    assert sum(name.startswith("train/") for name in shards["single"]) == -(-n_train // 4) > 1
    assert "images/shard-000000.tar" in shards["single"] and len(rows["single"]) == 30
    assert shards["mapped"] == shards["single"]
    assert pd.DataFrame(rows["mapped"]).equals(pd.DataFrame(rows["single"]))
    previews = preview_images(tmp_path / "mapped", rows["mapped"], 8)
    assert len(previews) == n_train and previews[0].shape == (3, 8, 8)
