import json
from pathlib import Path

import pytest
from diffusers import AutoencoderKL

from selftok.stages.base import run_stage
from selftok.tokenizer.model import SelftokTokenizer


@pytest.mark.integration
def test_vae_then_tokenizer_from_another_directory(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """vae_path (models/vae) is read from the project root, not the working directory, and the
    tokenizer folder ends up with its own copy of the VAE."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_stage("ingest", project)
    run_stage("validate", project)
    metrics = run_stage("train_vae", project)["vae"]
    assert metrics["latent_shape"] == [4, 8, 8] and 0.0 < metrics["ssim"] <= 1.0
    vae = AutoencoderKL.from_pretrained(project / "models" / "vae")
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (metrics["latent_shift"], metrics["latent_scale"])
    assert json.loads((project / "metrics" / "train_vae.json").read_text())["train"]["steps"] == 6

    run_stage("train_tokenizer", project)
    folder = project / "models" / "tokenizer"
    assert json.loads((folder / "config.json").read_text())["vae_path"] == "vae"
    assert (folder / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        project / "models" / "vae" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()
    assert SelftokTokenizer.from_pretrained(folder).input_shape(1) == (1, 4, 8, 8)
    assert not list(elsewhere.iterdir())  # nothing was written relative to the working directory
