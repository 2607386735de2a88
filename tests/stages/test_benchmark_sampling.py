"""The evaluate stage's benchmark sample count: an override of the VLM's recipe, nothing else."""

from __future__ import annotations

import pytest

from selftok.config import ConfigError, parse_params
from selftok.stages.evaluate import benchmark_sampling


def test_default_is_the_vlm_recipe() -> None:
    params = parse_params({})
    assert params.evaluate.samples_per_prompt is None
    assert benchmark_sampling(params) == params.vlm.sampling


def test_override_changes_only_the_count() -> None:
    params = parse_params({"evaluate": {"samples_per_prompt": 16}, "vlm": {"sampling": {"cfg_scale": 2.0}}})
    sampling = benchmark_sampling(params)
    assert sampling.samples_per_prompt == 16 and params.vlm.sampling.samples_per_prompt == 4
    assert sampling.model_dump(exclude={"samples_per_prompt"}) == params.vlm.sampling.model_dump(exclude={"samples_per_prompt"})


def test_zero_samples_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.samples_per_prompt"):
        parse_params({"evaluate": {"samples_per_prompt": 0}})
