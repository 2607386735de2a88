"""The benchmark: its sample count (an override of the VLM's recipe, nothing else) and the data
ceiling its real renders set."""

from __future__ import annotations

import pytest
import torch

from selftok.config import parse_params
from selftok.data.scenes import make_prompt
from selftok.errors import ConfigError
from selftok.eval.evaluator import ParsedObject
from selftok.vlm.benchmark import benchmark_sampling, data_ceiling
from selftok.vlm.params import SamplingParams


def test_no_count_is_the_vlm_recipe() -> None:
    sampling = SamplingParams()
    assert benchmark_sampling(sampling, None) == sampling


def test_a_count_changes_only_the_count() -> None:
    sampling = SamplingParams(cfg_scale=2.0, samples_per_prompt=4)
    bench = benchmark_sampling(sampling, 16)
    assert bench.samples_per_prompt == 16 and sampling.samples_per_prompt == 4
    assert bench.model_dump(exclude={"samples_per_prompt"}) == sampling.model_dump(exclude={"samples_per_prompt"})


def test_zero_samples_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.samples_per_prompt"):
        parse_params({"evaluate": {"samples_per_prompt": 0}})


def test_data_ceiling_judges_each_real_render_against_its_own_prompt() -> None:
    """Renders are prompt-major, n per prompt; the tokenizer lost the square of the second circle render."""
    circle, square = make_prompt("single_object", ["circle"]), make_prompt("single_object", ["square"])
    shown = [["circle"], ["circle", "square"], ["square"], ["square"]]

    class Evaluator:  # image i (its first pixel) shows shown[i]
        def parse(self, images: torch.Tensor) -> list[list[ParsedObject]]:
            return [[ParsedObject(s, "red", (8.0 * j, 0.0, 8.0 * j + 4, 4.0)) for j, s in enumerate(shown[int(i[0, 0, 0])])]
                    for i in images]

    real = torch.arange(4, dtype=torch.uint8)[:, None, None, None].expand(4, 3, 2, 2)
    ceiling = data_ceiling([circle, square], real, Evaluator(), n=2)
    assert ceiling["overall"] == 1.0 and ceiling["single_object"] == 1.0  # interleaved rows would score 0.5
    assert ceiling["overall_strict"] == 0.75 and ceiling["extra_objects"] == 0.25
    assert "images" not in ceiling
