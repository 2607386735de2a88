"""Tokenizer arms: built from selftok.paths, which dvc.yaml reads as its vars, so the foreach
stages resolve per arm to exactly the arm's folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftok import paths
from selftok.stages.arms import ARMS, SELFTOK, SPATIAL
from selftok.stages.base import read_spec, resolve_stages

ROOT = Path(__file__).resolve().parents[2]
ARM_STAGES = ("tokenize", "pretrain_vlm", "rl_finetune")


def test_arms_are_the_paths_module_and_write_apart() -> None:
    assert list(ARMS) == list(paths.ARMS) and (SELFTOK.name, SPATIAL.name) == ("selftok", "spatial")
    assert (SELFTOK.tokenizer, SELFTOK.renderer, SELFTOK.codes) == (Path("models/tokenizer"), Path("models/renderer"), Path("data/codes"))
    assert (SELFTOK.vlm, SELFTOK.vlm_rl, SELFTOK.registered_vlm, SELFTOK.suffix) == (Path("models/vlm"), Path("models/vlm_rl"), "selftok-vlm", "")
    assert SPATIAL.renderer is None and SPATIAL.model_folders() == (Path("models/spatial"),)  # its own decoder renders
    assert (SPATIAL.registered_vlm, SPATIAL.suffix) == ("selftok-spatial-vlm", "_spatial")
    outs = [path for arm in ARMS.values() for path in (arm.codes, arm.vlm, arm.vlm_rl, arm.vlm_checkpoints, arm.rl_checkpoints)]
    assert len(set(outs)) == len(outs)  # no two arms write one folder


def test_dvc_yaml_takes_its_paths_from_the_paths_module() -> None:
    text = (ROOT / "dvc.yaml").read_text()
    assert "src/selftok/paths.py" in text
    for arm in ARMS.values():
        for folder in (arm.tokenizer, arm.codes, arm.vlm, arm.vlm_rl, arm.vlm_checkpoints, arm.rl_checkpoints):
            assert f"{folder}\n" not in text and f"{folder}:" not in text, folder  # written once, in selftok.paths
    evaluate = read_spec(ROOT, "evaluate")
    assert {paths.EVALUATOR, paths.ACCEPTED, *(str(f) for arm in ARMS.values() for f in (arm.codes, arm.vlm, arm.vlm_rl))} <= set(evaluate.deps)
    assert evaluate.outs == [paths.REPORTS]


def test_read_spec_resolves_foreach_stages() -> None:
    stages = resolve_stages(ROOT)
    for group in ARM_STAGES:
        assert group not in stages and {f"{group}@{arm}" for arm in ARMS} <= set(stages)
    spec = read_spec(ROOT, "tokenize@spatial")
    assert (spec.group, spec.item) == ("tokenize", "spatial")
    assert spec.params == ["tokenize"] and spec.outs == ["data/codes_spatial"]
    assert spec.deps.count("models/spatial") == 1 and "models/tokenizer" not in spec.deps
    assert spec.metrics_file == "metrics/tokenize_spatial.json"
    selftok = read_spec(ROOT, "pretrain_vlm@selftok")
    assert {"data/codes", "models/tokenizer", "models/renderer"} <= set(selftok.deps)
    assert selftok.outs == ["models/vlm", "checkpoints/vlm"] and selftok.metrics_file == "metrics/pretrain_vlm.json"
    assert read_spec(ROOT, "rl_finetune@spatial").outs == ["models/vlm_rl_spatial", "checkpoints/rl_spatial"]
    plain = read_spec(ROOT, "evaluate")
    assert (plain.group, plain.item, plain.metrics_file) == ("evaluate", None, "metrics/evaluate.json")
    assert plain.plot("geneval") == "plots/geneval.csv"
    with pytest.raises(KeyError, match="declares no plot 'nope'"):
        plain.plot("nope")
    with pytest.raises(KeyError, match=r"known stages: .*tokenize@selftok"):
        read_spec(ROOT, "tokenize")
