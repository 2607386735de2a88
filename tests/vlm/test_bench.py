from __future__ import annotations

import json
from pathlib import Path

from selftok.commands.common import merge_bench
from selftok.config import load_params
from selftok.vlm.bench import bench_model, bench_vlm, scene_captions

ROOT = Path(__file__).resolve().parents[2]


def test_bench_measures_cached_and_uncached_generation_and_merges(tmp_path: Path) -> None:
    params = load_params(ROOT / "profiles" / "smoke.yaml")
    captions = scene_captions(params.data.scenes.max_objects, params.seed, 64)
    vlm = bench_model(tmp_path / "no-model", tmp_path / "no-codes", params.vlm, captions, params.seed)  # a fresh model
    results = bench_vlm(vlm, params.vlm, captions[:4], params.seed, train_steps=1)
    assert {"generate_tokens_per_s_cached", "generate_tokens_per_s_uncached", "train_tokens_per_s"} <= set(results)
    assert all(v > 0 for v in results.values())
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "bench.json").write_text(json.dumps({"encode_images_per_s": 12.0}))
    merged = json.loads(merge_bench(tmp_path, results).read_text())
    assert merged["encode_images_per_s"] == 12.0 and merged["train_tokens_per_s"] == results["train_tokens_per_s"]
