"""Speed of the VLM: image tokens/s sampled with and without the KV cache, and training tokens/s.

Speed does not depend on the weights, so a freshly built model of the params' size stands in
for a trained one that does not exist yet (``bench_model``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from selftok.data.scenes import SceneConfig, SceneGenerator
from selftok.training.loop import step_generator
from selftok.vlm.generate import generate_images
from selftok.vlm.model import SelftokVLM, build_lm
from selftok.vlm.params import VLMParams
from selftok.vlm.train import VLMTask
from selftok.vlm.vocab import VLMTokenizer


def scene_captions(max_objects: int, seed: int, n: int) -> list[str]:
    """Captions of the first ``n`` val scenes of a scene world: prompts to time."""
    generator = SceneGenerator(SceneConfig(max_objects=max_objects), seed)
    return [generator.scene("val", i).caption for i in range(n)]


def bench_model(folder: Path, codes: Path, params: VLMParams, captions: list[str], seed: int) -> SelftokVLM:
    """The VLM in ``folder``, else a fresh one of the params' size for the codes in ``codes``
    (K = 32, 1024 codes while there are none) with a text vocabulary built on ``captions``."""
    if (folder / "config.json").is_file():
        return SelftokVLM.from_pretrained(folder)
    info_file = codes / "info.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {"num_tokens": 32, "codebook_size": 1024}
    tokenizer = VLMTokenizer.build(captions, int(info["codebook_size"]), int(info["num_tokens"]), params.text_vocab_size)
    return SelftokVLM(build_lm(params, tokenizer, seed), tokenizer, params.sampling)


def bench_vlm(vlm: SelftokVLM, params: VLMParams, captions: list[str], seed: int, train_steps: int = 3) -> dict[str, float]:
    """Tokens/s of generating one image per caption (cached and uncached) and of ``train_steps``
    training steps at the params' batch size."""
    s = vlm.sampling
    k = vlm.tokenizer.num_tokens
    results: dict[str, float] = {}
    for cached in (True, False):
        generate_images(vlm.lm, vlm.tokenizer, captions[:2], 1, s.cfg_scale, s.temperature, s.top_k, s.seed, use_cache=cached, min_p=s.min_p)
        started = time.perf_counter()
        generate_images(vlm.lm, vlm.tokenizer, captions, 1, s.cfg_scale, s.temperature, s.top_k, s.seed, s.batch_size, cached, s.min_p)
        results[f"generate_tokens_per_s_{'cached' if cached else 'uncached'}"] = len(captions) * k / (time.perf_counter() - started)

    codes = torch.randint(0, vlm.tokenizer.num_codes, (params.batch_size, k), generator=torch.Generator().manual_seed(0))
    ids = vlm.tokenizer.encode_text([captions[i % len(captions)] for i in range(len(codes))])
    task = VLMTask(lm=vlm.lm.train(), tokenizer=vlm.tokenizer, captions=ids, codes=codes, params=params, device=vlm.lm.device)
    optimizer = torch.optim.AdamW(task.param_groups(params.lr))
    index = torch.arange(len(codes))
    elapsed, tokens = 0.0, 0
    for step in range(train_steps + 1):  # the first step warms up and is not timed
        started = time.perf_counter()
        loss, parts = task.loss(task.module, index, step_generator(seed, step, 0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            elapsed += time.perf_counter() - started
            tokens += parts.tokens
    results["train_tokens_per_s"] = tokens / elapsed
    results["vlm_bench_batch_size"] = float(params.batch_size)
    results["vlm_bench_image_tokens"] = float(k)
    return results
