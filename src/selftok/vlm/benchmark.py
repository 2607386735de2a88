"""The benchmark every VLM is scored on: GenEval-style generation of its prompts with one sampling
recipe, judged by the scene evaluator (and a second, independent judge), beside what real renders
of the same prompts score.

Scores under one ``benchmark_hash`` (same prompts, same recipe, same judge) are comparable; the
evaluate stage and the RL-seed study both score through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selftok.data.dataset import to_uint8
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import diversity, frechet_distance
from selftok.eval.geneval import Record, judge_images, summarize_judged
from selftok.hashing import file_hash
from selftok.schema import params_hash
from selftok.vlm.model import SelftokVLM
from selftok.vlm.params import SamplingParams
from selftok.vlm.scores import DecodeFn, generation


@dataclass(frozen=True, kw_only=True)
class Benchmark:
    """One draw of the benchmark: its prompts, its sampling recipe, and real renders of the prompts."""

    records: list[Record]
    sampling: SamplingParams
    renders: torch.Tensor  # uint8, sampling.samples_per_prompt per prompt (prompt-major): the diversity reference


def benchmark_sampling(sampling: SamplingParams, samples_per_prompt: int | None) -> SamplingParams:
    """The VLM's sampling recipe with the benchmark's number of images per prompt (None: the recipe's)."""
    return sampling if samples_per_prompt is None else sampling.model_copy(update={"samples_per_prompt": samples_per_prompt})


def benchmark_hash(records: list[Record], sampling: SamplingParams, evaluator: Path) -> str:
    """Same prompts, same sampling recipe, same judge (the evaluator folder's weights): scores under
    one hash are comparable."""
    return params_hash({"records": records, "sampling": sampling.model_dump(mode="json"), "judge": file_hash(evaluator)})


def benchmark_generation(
    vlm: SelftokVLM, records: list[Record], decode: DecodeFn, evaluator: SceneEvaluator, sampling: SamplingParams,
    real_features: torch.Tensor | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """One model's GenEval-style scores on the benchmark prompts, with the diversity of its images
    within each prompt (a high score from one image per prompt is collapse, not skill) and, given
    ``real_features`` (evaluator features of real renders of the same prompts, ``reference_images``),
    the Frechet distance of its images to them: how far the images left the data to win the judge
    (a reward hack scores well on the rules and far on this)."""
    summary, images = generation(vlm.lm, vlm.tokenizer, records, decode, evaluator, sampling)
    summary.pop("images", None)
    features = evaluator.features(images)
    summary["diversity"] = diversity(to_uint8(images).flatten(1), features, images, sampling.samples_per_prompt)
    if real_features is not None:
        summary["frechet_to_real"] = frechet_distance(features, real_features)
    return summary, images


def data_ceiling(records: list[Record], real: torch.Tensor, evaluator: SceneEvaluator, n: int) -> dict[str, Any]:
    """The benchmark's scores of ``reference_images``, the real renders of its prompts through the
    tokenizer: what a model that draws exactly like its data would score. A gain that lifts a model
    above it is the judge being fooled or the model drawing more legibly than the tokenizer
    reconstructs the data; either way, look at the images."""
    rows = [r for r in records for _ in range(n)]
    summary = summarize_judged(rows, judge_images(rows, real, evaluator))
    summary.pop("images")
    return summary


def reference_diversity(real: torch.Tensor, real_features: torch.Tensor, group_size: int) -> dict[str, float]:
    """The diversity generations are measured against: that of ``reference_images`` and their
    evaluator features (a right answer varies only in layout, so spread falls as scores rise)."""
    return diversity(to_uint8(real).flatten(1), real_features, real, group_size)


def second_opinion(rows: list[Record], images: torch.Tensor, evaluator: SceneEvaluator, judge: SceneEvaluator) -> dict[str, float]:
    """The second judge's scores of the images the evaluator scored, and the share of images on which
    both give the same verdict (a reward that rises while the second judge stays flat is hacking)."""
    first, second = judge_images(rows, images, evaluator), judge_images(rows, images, judge)
    summary = summarize_judged(rows, second)
    agreement = sum(a.correct == b.correct for a, b in zip(first, second, strict=True)) / max(len(rows), 1)
    return {**{k: summary[k] for k in ("overall", "overall_se", "overall_strict", "overall_strict_se")}, "agreement": agreement}
