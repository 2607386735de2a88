"""Tokenizer arms: the foreach stages of dvc.yaml resolve per arm, and agree with selftok.stages.arms."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from selftok.stages.arms import ARMS, SELFTOK, SPATIAL
from selftok.stages.base import read_spec, resolve_stages

ROOT = Path(__file__).resolve().parents[2]
ARM_STAGES = ("tokenize", "pretrain_vlm", "rl_finetune")


def test_selftok_arm_keeps_the_paths_the_pipeline_always_had() -> None:
    assert (SELFTOK.tokenizer, SELFTOK.renderer, SELFTOK.codes) == (Path("models/tokenizer"), Path("models/renderer"), Path("data/codes"))
    assert (SELFTOK.vlm, SELFTOK.vlm_rl, SELFTOK.registered_vlm) == (Path("models/vlm"), Path("models/vlm_rl"), "selftok-vlm")
    assert SPATIAL.renderer is None and SPATIAL.model_folders() == (Path("models/spatial"),)
    outs = [path for arm in ARMS.values() for path in (arm.codes, arm.vlm, arm.vlm_rl, arm.vlm_checkpoints, arm.rl_checkpoints)]
    assert len(set(outs)) == len(outs)  # no two arms write one folder


def test_dvc_arms_agree_with_the_python_arms() -> None:
    arms = next(v["arms"] for v in yaml.safe_load((ROOT / "dvc.yaml").read_text())["vars"] if "arms" in v)
    assert list(arms) == list(ARMS)
    for name, arm in ARMS.items():
        entry = arms[name]
        assert Path(entry["renderer"]) == (arm.renderer or arm.tokenizer) and entry["suffix"] == arm.suffix
        for key in ("tokenizer", "codes", "vlm", "vlm_rl", "vlm_checkpoints", "rl_checkpoints"):
            assert Path(entry[key]) == getattr(arm, key), (name, key)


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
    with pytest.raises(KeyError, match=r"known stages: .*tokenize@selftok"):
        read_spec(ROOT, "tokenize")
