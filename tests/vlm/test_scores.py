from __future__ import annotations

import copy

import pytest
import torch
from vlm_fixtures import Data

from selftok.data.scenes import make_prompt
from selftok.eval.evaluator import ParsedObject
from selftok.vlm import scores as vlm_scores
from selftok.vlm.params import SamplingParams
from selftok.vlm.scores import caption_correct, caption_scores


def test_true_captions_score_and_wrong_ones_do_not(data: Data) -> None:
    assert all(caption_correct(c, m) for c, m in zip(data.captions, data.metadata, strict=True))
    two = next(m for m in data.metadata if m["category"] == "two_objects")
    a, b = (o["shape"] for o in two["objects"])
    assert caption_correct(f"a photo of {'an' if b[0] in 'aeiou' else 'a'} {b} and {'an' if a[0] in 'aeiou' else 'a'} {a}", two)
    assert not caption_correct(f"a photo of {'an' if a[0] in 'aeiou' else 'a'} {a}", two)  # an object left out
    colored = next(m for m in data.metadata if m["category"] == "colors")
    wrong = copy.deepcopy(colored)
    wrong["objects"][0]["color"] = "red" if colored["objects"][0]["color"] != "red" else "blue"
    assert not caption_correct(colored["prompt"]["prompt"], wrong)
    assert not caption_correct("a zebra", colored)
    scores = caption_scores(data.captions[:8], data.metadata[:8], data.captions[:8])
    assert scores["caption_accuracy"] == scores["caption_exact"] == scores["caption_parsed"] == 1.0


def test_generation_counts_extra_objects_and_scores_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clutter passes GenEval's rules (overall) but not the strict score, and is counted."""
    circle, square = make_prompt("single_object", ["circle"]), make_prompt("single_object", ["square"])
    found = [["circle"], ["circle", "square", "star"], [], ["square", "circle"]]  # two images per prompt
    codes = torch.arange(4)[:, None].repeat(1, 3)  # image i is drawn from codes i and shows found[i]

    class Evaluator:
        def parse(self, images: torch.Tensor) -> list[list[ParsedObject]]:
            return [[ParsedObject(s, "red", (4.0 * j, 0.0, 4.0 * j + 4, 4.0)) for j, s in enumerate(found[int(i)])] for i in images]

    monkeypatch.setattr(vlm_scores, "generate_images", lambda *args, **kwargs: codes)
    summary, _ = vlm_scores.generation(None, None, [circle, square], lambda c: c[:, 0], Evaluator(), SamplingParams(samples_per_prompt=2))
    assert summary["overall"] == 0.75 and summary["overall_strict"] == 0.25
    assert summary["extra_objects"] == (0 + 2 + 0 + 1) / 4
