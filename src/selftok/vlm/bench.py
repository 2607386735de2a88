"""Speed of the VLM: image tokens/s sampled with and without the KV cache, and training tokens/s.

Uses models/vlm when it exists, else a freshly built model of the params' size (speed does not
depend on the weights). Results merge into metrics/bench.json next to the other components'.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from selftok.config import Params
from selftok.data.scenes import SceneConfig, SceneGenerator
from selftok.tokenizer.train import step_generator
from selftok.vlm.generate import generate_images
from selftok.vlm.model import SelftokVLM, build_lm
from selftok.vlm.train import VLMTask
from selftok.vlm.vocab import VLMTokenizer

MODEL_DIR, CODES_INFO, BENCH_FILE = Path("models/vlm"), Path("data/codes/info.json"), Path("metrics/bench.json")


def bench_model(root: Path, params: Params) -> SelftokVLM:
    if (root / MODEL_DIR / "config.json").is_file():
        return SelftokVLM.from_pretrained(root / MODEL_DIR)
    info = json.loads((root / CODES_INFO).read_text()) if (root / CODES_INFO).is_file() else {"num_tokens": 32, "codebook_size": 1024}
    captions = [s.caption for s in _scenes(params, 256)]
    tokenizer = VLMTokenizer.build(captions, int(info["codebook_size"]), int(info["num_tokens"]), params.vlm.text_vocab_size)
    return SelftokVLM(build_lm(params.vlm, tokenizer, params.seed), tokenizer, params.vlm.sampling)


def _scenes(params: Params, n: int) -> list[Any]:
    generator = SceneGenerator(SceneConfig(max_objects=params.data.scenes.max_objects), params.seed)
    return [generator.scene("val", i) for i in range(n)]


def bench_vlm(root: Path, params: Params, prompts: int = 16, train_steps: int = 3) -> dict[str, float]:
    vlm = bench_model(root, params)
    s = vlm.sampling
    k = vlm.tokenizer.num_tokens
    captions = [scene.caption for scene in _scenes(params, prompts)]
    results: dict[str, float] = {}
    for cached in (True, False):
        generate_images(vlm.lm, vlm.tokenizer, captions[:2], 1, s.cfg_scale, s.temperature, s.top_k, s.seed, use_cache=cached, min_p=s.min_p)
        started = time.perf_counter()
        generate_images(vlm.lm, vlm.tokenizer, captions, 1, s.cfg_scale, s.temperature, s.top_k, s.seed, s.batch_size, cached, s.min_p)
        results[f"generate_tokens_per_s_{'cached' if cached else 'uncached'}"] = prompts * k / (time.perf_counter() - started)

    codes = torch.randint(0, vlm.tokenizer.num_codes, (params.vlm.batch_size, k), generator=torch.Generator().manual_seed(0))
    task = VLMTask(vlm.lm.train(), vlm.tokenizer, vlm.tokenizer.encode_text([captions[i % len(captions)] for i in range(len(codes))]), codes, params.vlm, vlm.lm.device)
    optimizer = torch.optim.AdamW(task.param_groups(params.vlm.lr))
    index = torch.arange(len(codes))
    elapsed, tokens = 0.0, 0
    for step in range(train_steps + 1):  # the first step warms up and is not timed
        started = time.perf_counter()
        loss, parts = task.loss(task.module, index, step_generator(params.seed, step, 0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            elapsed += time.perf_counter() - started
            tokens += parts.tokens
    results["train_tokens_per_s"] = tokens / elapsed
    results["vlm_bench_batch_size"] = float(params.vlm.batch_size)
    results["vlm_bench_image_tokens"] = float(k)
    return results


def merge_bench(root: Path, results: dict[str, float]) -> Path:
    """Update metrics/bench.json in place, keeping what other benchmarks wrote."""
    path = root / BENCH_FILE
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    return path
