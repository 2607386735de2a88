"""The evaluate stage's generation benchmark, loaded once and scored many times.

RL at this scale is chaotic and one draw of images moves a score by about 2 points, so studies
score many models and recipes; loading the tokenizer, the judge and the real renders once serves
them all. Three prompt sets (selftok.eval.geneval): ``compositional`` (never captioned) and
``rl_test`` (captioned in pretraining, never used by RL), the evaluate stage's benchmark, and
``rl_train``, as many of the prompts RL trains on. A gain on ``rl_train`` that the others do not
show is learnt per prompt and does not carry over. Loaded with ``judged=True``, every score also
carries the second, independent judge's verdict on the same images (as the evaluate stage's
``generation.<set>.<model>.judge``): a gain the reward's own evaluator sees and the judge does not
is the reward being hacked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selftok.config import Params
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.geneval import BENCHMARK_SETS, Record, limited_sets, real_renders
from selftok.paths import EVALUATOR, JUDGE
from selftok.stages.arms import SELFTOK, Arm
from selftok.vlm.benchmark import benchmark_generation, benchmark_sampling, data_ceiling, reference_diversity, second_opinion
from selftok.vlm.decode import reference_images, render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.scores import DecodeFn

SCORED = ("rl_train", *BENCHMARK_SETS)


def reseeded(params: Params, offset: int) -> Params:
    """``params`` with the sampling seed moved by ``offset``: another draw of the same recipe."""
    sampling = params.vlm.sampling
    vlm = params.vlm.model_copy(update={"sampling": sampling.model_copy(update={"seed": sampling.seed + offset})})
    return params.model_copy(update={"vlm": vlm})


def benchmark_records(params: Params) -> dict[str, list[Record]]:
    """The scored prompt sets, at most ``vlm.eval.geneval_prompts_per_category`` per category each."""
    return limited_sets(params.data, params.seed, params.geneval, params.vlm.eval.geneval_prompts_per_category, SCORED)


@dataclass(frozen=True)
class PromptSet:
    """Prompts to score on, with their real renders through the tokenizer and those renders' evaluator features."""

    records: list[Record]
    real: torch.Tensor  # reference_images, prompt-major
    real_features: torch.Tensor


@dataclass(frozen=True)
class Benchmark:
    """What scores a VLM: the root's tokenizer with its renderer, its evaluator (and second judge),
    and the scored prompt sets (RL changes none of these, so one load serves the pretrained model
    and every seed)."""

    decode: DecodeFn
    evaluator: SceneEvaluator
    params: Params
    sets: dict[str, PromptSet]
    judge: SceneEvaluator | None = None  # the second judge (models/judge), where loaded

    @classmethod
    def load(cls, root: Path, params: Params, arm: Arm = SELFTOK, judged: bool = False) -> Benchmark:
        """The arm's tokenizer and the root's evaluator (and, ``judged``, second judge), with every
        scored prompt set's real renders; a missing model folder fails here, before minutes of work."""
        tokenizer = arm.load_tokenizer(root, with_renderer=True)  # names a missing model folder
        decode, evaluator = render_fn(tokenizer), SceneEvaluator.load(root / EVALUATOR)
        judge = load_judge(root) if judged else None
        sets = {}
        for name, rows in benchmark_records(params).items():
            per_prompt = benchmark_sampling(params.vlm.sampling, params.evaluate.samples_per_prompt).samples_per_prompt
            real = reference_images(tokenizer, decode, real_renders(params.data, rows, per_prompt))
            sets[name] = PromptSet(rows, real, evaluator.features(real))
        return cls(decode, evaluator, params, sets, judge)

    def score(self, model: Path, prompts: str = "compositional") -> dict[str, Any]:
        """The evaluate stage's generation scores of one VLM on a prompt set (per category, diversity,
        distance to real), with the second judge's scores of the same images under ``judge`` where loaded."""
        chosen = self.sets[prompts]
        sampling = benchmark_sampling(self.params.vlm.sampling, self.params.evaluate.samples_per_prompt)
        summary, images = benchmark_generation(SelftokVLM.from_pretrained(model), chosen.records, self.decode, self.evaluator,
                                               sampling, chosen.real_features)
        if self.judge is not None:
            summary["judge"] = second_opinion([r for r in chosen.records for _ in range(sampling.samples_per_prompt)],
                                              images, self.evaluator, self.judge)
        return summary

    def with_params(self, params: Params) -> Benchmark:
        """The same prompts, renders and judge, drawing with ``params``' sampling recipe."""
        return dataclasses.replace(self, params=params)

    def score_seeds(self, model: Path, prompts: str, seeds: range) -> list[dict[str, Any]]:
        """``score`` under each sampling seed offset in ``seeds`` (0: the recipe's own, the evaluate
        stage's images): one draw of images moves a score by about 2 points, so gains are paired
        on the same seeds and averaged over them."""
        return [self.with_params(reseeded(self.params, i)).score(model, prompts) for i in seeds]

    def reference(self, prompts: str = "compositional") -> dict[str, Any]:
        """The real renders of a prompt set through the tokenizer, as evaluate measures them: their
        diversity and their scores (the data ceiling)."""
        chosen, n = self.sets[prompts], benchmark_sampling(self.params.vlm.sampling, self.params.evaluate.samples_per_prompt).samples_per_prompt
        return {"diversity_reference": reference_diversity(chosen.real, chosen.real_features, n),
                "data_ceiling": data_ceiling(chosen.records, chosen.real, self.evaluator, n)}


def load_judge(root: Path) -> SceneEvaluator:
    """The benchmark's second, independent judge; named with the stage that makes it where missing."""
    folder = root / JUDGE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: missing; the train_evaluator stage makes it (run the pipeline up to train_evaluator "
                                f"on {root})")
    return SceneEvaluator.load(folder)
