"""The whole smoke pipeline on pretrained parts: a tiny AutoencoderKL as `vae.pretrained` and a tiny
Llama with its own tokenizer as `vlm.init_from`, both saved to folders the way the hub ships them.

It runs on a clone of the session's smoke run (tests/conftest.py) with those two keys set: DVC reruns
every stage that reads a pretrained part (the VAE, everything downstream of it, both arms' VLMs and
RL, evaluate) and skips the rest, whose inputs did not change. Its recipe is cut further where only
the rerun stages read it (the VLM, RL and evaluate sections) to keep it cheap.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from tests.conftest import clone_project
from tests.vlm.pretrained_fixtures import save_tiny_llama, save_tiny_vae
from transformers import AutoTokenizer

from selftok import tracking
from selftok.data.dataset import to_unit
from selftok.data.scenes import SceneConfig, SceneGenerator, render
from selftok.stages.arms import SELFTOK, SPATIAL
from selftok.stages.base import resolve_stages
from selftok.vlm.decode import render_fn
from selftok.vlm.model import SelftokVLM

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
# What reads neither pretrained part, so DVC skips it on the clone: the data, the evaluator, the
# spatial control's tokenizer and its codes (the spatial arm's VLM and RL start from the LM).
UNCHANGED = {"ingest", "validate", "train_evaluator", "train_spatial", "tokenize@spatial"}
CHEAPER = {  # sections only the rerun stages read (train_spatial shares tokenizer.* and renderer.steps: left alone)
    "vlm": {"steps": 4, "warmup_steps": 1, "log_every": 2, "eval_every": 4, "checkpoint_every": 2},
    "rl": {"steps": 2, "group_size": 2, "val_every": 2, "checkpoint_every": 2},
}
CHEAPER_EVAL = {"caption_samples": 4, "sample_prompts": 1}  # vlm.eval: two prompts per category kept (standard errors)
CHEAPER_EVALUATE = {"val_images": 8, "decode_steps": 1}  # the reconstruction table; the benchmark's samples left as they are


@pytest.fixture(scope="module")
def pretrained_run(smoke_run, prefect_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, list]:
    """The smoke run's clone, rerun by the flow on a tiny pretrained VAE and LM."""
    from flows.pipeline import pipeline

    tmp = tmp_path_factory.mktemp("pretrained")
    generator = SceneGenerator(SceneConfig(image_size=16), seed=0)
    captions = [generator.scene("train", i).caption for i in range(96)]  # type: ignore[arg-type]
    vae, lm = save_tiny_vae(tmp / "vae"), save_tiny_llama(tmp / "llama", captions)
    project = clone_project(smoke_run[0], tmp / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["vae"]["pretrained"] = str(vae)
    params["vlm"] |= {"init_from": str(lm)} | CHEAPER["vlm"]
    params["vlm"]["eval"] |= CHEAPER_EVAL
    params["rl"] |= CHEAPER["rl"]
    params["evaluate"] |= CHEAPER_EVALUATE
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results = pipeline(root=str(project))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return project, vae, lm, results


def test_every_stage_that_reads_a_pretrained_part_reran(pretrained_run) -> None:
    _, _, _, results = pretrained_run
    assert [r["stage"] for r in results] == list(resolve_stages(ROOT))
    assert {r["stage"] for r in results if r["skipped"]} == UNCHANGED, results


def test_evaluate_scores_the_pretrained_models(pretrained_run) -> None:
    project, _, _, _ = pretrained_run
    metrics = tracking.flatten(json.loads((project / "metrics" / "evaluate.json").read_text()))
    for prefix in ("generation.", "control.spatial.generation."):  # each arm's pretrained and RL model, on every prompt set
        scores = {k: v for k, v in metrics.items() if k.startswith(prefix) and isinstance(v, float | int)}
        assert any(k.endswith(".pretrained.overall") for k in scores) and any(k.endswith(".rl.overall") for k in scores), scores
        assert all(math.isfinite(v) for v in scores.values()), scores
    assert 0 <= metrics["comprehension.caption_accuracy"] <= 1


def test_the_vae_is_the_pretrained_one_with_fitted_statistics(pretrained_run) -> None:
    project, vae, _, _ = pretrained_run
    metrics = json.loads((project / "metrics" / "train_vae.json").read_text())
    assert metrics["vae"]["latent_shape"] == [6, 4, 4] and metrics["train"]["steps"] == 0  # its shape; nothing trained
    saved, original = AutoencoderKL.from_pretrained(project / "models" / "vae"), AutoencoderKL.from_pretrained(vae)
    assert saved.config.scaling_factor == metrics["vae"]["latent_scale"] != original.config.scaling_factor
    assert saved.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(value, original.state_dict()[name]) for name, value in saved.state_dict().items())
    assert SELFTOK.load_tokenizer(project).input_shape(1) == (1, 6, 4, 4)  # the tokenizer trained on its latents


def test_the_vlms_start_from_the_pretrained_lm_generate_and_caption(pretrained_run) -> None:
    project, _, lm, _ = pretrained_run
    base = AutoTokenizer.from_pretrained(lm)
    for arm in (SELFTOK, SPATIAL):
        for folder in (arm.vlm, arm.vlm_rl):
            vlm = SelftokVLM.from_pretrained(project / folder)
            assert (vlm.tokenizer.bos_id, vlm.tokenizer.eos_id) == (base.bos_token_id, base.eos_token_id), folder
            assert vlm.tokenizer.pad_id >= len(base) and vlm.lm.config.vocab_size == len(vlm.tokenizer)
    vlm = SelftokVLM.from_pretrained(project / SELFTOK.vlm)
    tokenizer = SELFTOK.load_tokenizer(project, with_renderer=True)
    k, c = vlm.tokenizer.num_tokens, vlm.tokenizer.num_codes
    codes = vlm.generate(["a photo of a red circle"], 2)
    assert codes.shape == (2, k) and int(codes.min()) >= 0 and int(codes.max()) < c
    images = render_fn(tokenizer)(codes)
    assert images.shape == (2, 3, 16, 16) and bool(torch.isfinite(images).all())
    scene = SceneGenerator(SceneConfig(image_size=16), seed=0).scene("val", 0)  # type: ignore[arg-type]
    pixels = torch.from_numpy(np.array(render(scene))).permute(2, 0, 1)[None]
    with torch.no_grad():
        real = tokenizer.encode(to_unit(pixels))
    assert real.shape == (1, k)
    texts = vlm.caption(real)
    assert len(texts) == 1 and isinstance(texts[0], str) and "<v_" not in texts[0]
