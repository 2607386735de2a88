"""Scores of the VLM: GenEval-style generation on benchmark prompts and caption accuracy on val.

Both reuse the benchmark's rules (selftok.eval.geneval): generated images are parsed by the
scene evaluator and judged against their prompt record; a generated caption is read back as
the prompt record it spells (every prompt of the scene world is enumerable) and judged against
the exact objects of the val image, and must also name every object (counts complete), so
"a photo of a circle" for a circle beside a square is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch
from transformers import PreTrainedModel

from selftok.data.scenes import CATEGORIES, SceneConfig
from selftok.eval.evaluator import SceneEvaluator, objects_from_metadata
from selftok.eval.geneval import Record, judge, judge_images, prompt_groups, summarize_judged
from selftok.vlm.generate import caption, generate_images
from selftok.vlm.params import SamplingParams
from selftok.vlm.vocab import VLMTokenizer

DecodeFn = Callable[[torch.Tensor], torch.Tensor]  # codes [B, K] -> images [-1, 1] [B, 3, H, W]


@cache
def caption_records() -> dict[str, Record]:
    """Every prompt string of the scene world -> its GenEval record."""
    groups = prompt_groups(SceneConfig(max_objects=4))
    return {record["prompt"]: record for group in groups.values() for variants in group for record in variants}


def caption_correct(text: str, metadata: dict[str, Any]) -> bool:
    """The caption is a prompt of the world, true of the scene, and names all of its objects."""
    record = caption_records().get(text.strip())
    if record is None:
        return False
    named: dict[str, int] = {}
    for item in record["include"]:
        named[item["class"]] = named.get(item["class"], 0) + item["count"]
    return named == metadata["counts"] and judge(record, objects_from_metadata(metadata)).correct


def caption_scores(texts: Sequence[str], metadata: Sequence[dict[str, Any]], references: Sequence[str]) -> dict[str, Any]:
    correct = [caption_correct(t, m) for t, m in zip(texts, metadata, strict=True)]
    per_category: dict[str, list[bool]] = {}
    for ok, meta in zip(correct, metadata, strict=True):
        per_category.setdefault(meta["category"], []).append(ok)
    return {
        "caption_accuracy": sum(correct) / len(correct),
        "caption_parsed": sum(t.strip() in caption_records() for t in texts) / len(texts),
        "caption_exact": sum(t.strip() == r for t, r in zip(texts, references, strict=True)) / len(texts),
        "caption_per_category": {tag: sum(v) / len(v) for tag in CATEGORIES if (v := per_category.get(tag))},
    }


def comprehension(
    lm: PreTrainedModel, tokenizer: VLMTokenizer, codes: torch.Tensor, metadata: Sequence[dict[str, Any]],
    references: Sequence[str], sampling: SamplingParams,
) -> tuple[dict[str, Any], list[str]]:
    """Caption val codes greedily and score them against the exact scene metadata."""
    texts = caption(lm, tokenizer, codes, sampling.caption_max_tokens, sampling.batch_size)
    return caption_scores(texts, metadata, references), texts


def generation(
    lm: PreTrainedModel, tokenizer: VLMTokenizer, records: Sequence[Record], decode: DecodeFn,
    evaluator: SceneEvaluator, sampling: SamplingParams,
) -> tuple[dict[str, Any], torch.Tensor]:
    """GenEval-style summary (overall = mean over categories) of samples_per_prompt images per prompt,
    plus the mean number of objects drawn beyond those asked for and the overall score of images
    that are correct with none (``overall_strict``); returns the summary and the decoded images
    (prompt-major)."""
    n = sampling.samples_per_prompt
    codes = generate_images(
        lm, tokenizer, [r["prompt"] for r in records], n, sampling.cfg_scale, sampling.temperature,
        sampling.top_k, sampling.seed, sampling.batch_size, min_p=sampling.min_p,
    )
    images = torch.cat([decode(codes[i : i + 256]) for i in range(0, len(codes), 256)])
    rows = [r for r in records for _ in range(n)]
    return summarize_judged(rows, judge_images(rows, images, evaluator)), images

