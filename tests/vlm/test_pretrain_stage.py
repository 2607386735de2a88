from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from vlm_fixtures import C, K

from selftok import tracking
from selftok.config import load_params
from selftok.stages.arms import SELFTOK
from selftok.stages.base import guard_checkpoints, input_paths, read_spec, resume_fingerprint, run_stage, used_params
from selftok.vlm.model import SelftokVLM
from selftok.vlm.synthetic import write_synthetic_codes


@pytest.mark.integration
def test_pretrain_vlm_stage_on_synthetic_codes(project: Path) -> None:
    write_synthetic_codes(project, SELFTOK.codes, n_train=64, n_val=16, num_tokens=K, num_codes=C, image_size=16, shard_size=32)
    for upstream in (SELFTOK.tokenizer, SELFTOK.renderer, "models/evaluator"):  # present for DVC, but holding no model
        (project / upstream).mkdir(parents=True)
    metrics = run_stage("pretrain_vlm@selftok", project)
    assert json.loads((project / "metrics" / "pretrain_vlm.json").read_text()) == metrics
    assert metrics["steps"] == 30
    assert MlflowClient().search_model_versions("name='selftok-vlm'")  # registered in the project's store
    assert 0.0 <= metrics["comprehension"]["caption_accuracy"] <= 1.0
    assert "generation" not in metrics  # no renderer or evaluator in this project
    assert (project / "checkpoints" / "vlm" / "step_0000030" / "state.json").is_file()
    vlm = SelftokVLM.from_pretrained(project / "models" / "vlm")
    assert vlm.generate(["a photo of a red circle"], 2).shape == (2, K)
    spec = read_spec(project, "pretrain_vlm@selftok")

    def guard() -> None:  # what the stage contract does before the stage runs
        used = used_params(spec, load_params(project / "params.yaml"))
        guard_checkpoints(project, spec, resume_fingerprint(used, tracking.input_hashes(input_paths(project, spec))))

    guard()  # same recipe and codes: the checkpoint is kept for resuming
    assert (project / "checkpoints" / "vlm" / "step_0000030" / "state.json").is_file()
    text = (project / "params.yaml").read_text()
    assert "sample_prompts: 4" in text and "lr: 0.001" in text
    (project / "params.yaml").write_text(text.replace("sample_prompts: 4", "sample_prompts: 2"))
    guard()  # an evaluation-only change keeps it too
    assert (project / "checkpoints" / "vlm" / "step_0000030" / "state.json").is_file()
    (project / "params.yaml").write_text(text.replace("lr: 0.001", "lr: 0.002"))
    guard()
    assert not list((project / "checkpoints" / "vlm").glob("step_*"))  # another recipe starts over
