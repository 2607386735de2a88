from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from vlm_fixtures import C, K

from selftok.config import load_params
from selftok.stages.arms import SELFTOK
from selftok.stages.base import StageContext, read_spec, run_stage
from selftok.stages.pretrain_vlm import fresh_checkpoints
from selftok.vlm.model import SelftokVLM
from selftok.vlm.synthetic import write_synthetic_codes


@pytest.mark.integration
def test_pretrain_vlm_stage_on_synthetic_codes(project: Path) -> None:
    write_synthetic_codes(project, n_train=64, n_val=16, num_tokens=K, num_codes=C, image_size=16, shard_size=32)
    metrics = run_stage("pretrain_vlm@selftok", project)
    assert json.loads((project / "metrics" / "pretrain_vlm.json").read_text()) == metrics
    assert metrics["steps"] == 30
    assert MlflowClient().search_model_versions("name='selftok-vlm'")  # registered in the project's store
    assert 0.0 <= metrics["comprehension"]["caption_accuracy"] <= 1.0
    assert "generation" not in metrics  # no renderer or evaluator in this project
    assert (project / "checkpoints" / "vlm" / "step_0000030" / "state.json").is_file()
    vlm = SelftokVLM.from_pretrained(project / "models" / "vlm")
    assert vlm.generate(["a photo of a red circle"], 2).shape == (2, K)
    ctx = StageContext("pretrain_vlm@selftok", project, load_params(project / "params.yaml"), read_spec(project, "pretrain_vlm@selftok"))
    fresh_checkpoints(ctx, SELFTOK)  # same recipe and codes: the checkpoint is kept for resuming
    assert (project / "checkpoints" / "vlm" / "step_0000030" / "state.json").is_file()
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("lr: 0.001", "lr: 0.002"))
    fresh_checkpoints(StageContext(ctx.name, project, load_params(project / "params.yaml"), ctx.spec), SELFTOK)
    assert not list((project / "checkpoints" / "vlm").glob("step_*"))  # another recipe starts over
