"""`vae.pretrained`: a diffusers AutoencoderKL used as is, its latent statistics fitted by train_vae."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from diffusers import AutoencoderKL
from tests.vlm.pretrained_fixtures import save_tiny_vae

from selftok.errors import ConfigError
from selftok.stages.base import run_stage
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.params import VaeExpected, VaeParams
from selftok.tokenizer.vae import load_pretrained_vae
from selftok.training.loop import make_accelerator


def test_loading_checks_the_expected_shape_the_image_size_and_names_hub_ids(tmp_path: Path) -> None:
    folder = save_tiny_vae(tmp_path / "vae")
    assert load_pretrained_vae(VaeParams(pretrained=str(folder)), 16).config.latent_channels == 6
    expected = VaeExpected(latent_channels=16, block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, use_quant_conv=True)
    with pytest.raises(ConfigError, match=r"vae\.expected\.latent_channels 16 != 6"):
        load_pretrained_vae(VaeParams(pretrained=str(folder), expected=expected), 16)
    with pytest.raises(ConfigError, match=r"data\.image_size 18 is not divisible"):
        load_pretrained_vae(VaeParams(pretrained=str(folder)), 18)
    with pytest.raises(ConfigError, match=r"vae\.pretrained 'no-such-org/sd3'.*hub id"):
        load_pretrained_vae(VaeParams(pretrained="no-such-org/sd3", subfolder="vae"), 16)


def test_mixed_precision_and_tf32_are_no_ops_on_cpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CPU check")
    accelerator = make_accelerator(VaeParams(mixed_precision="bf16", tf32=True))
    assert accelerator.mixed_precision == "no" and accelerator.device.type == "cpu"


@pytest.mark.integration
def test_train_vae_fits_a_pretrained_vae_and_the_tokenizer_reads_its_latents(project: Path, tmp_path: Path) -> None:
    folder = save_tiny_vae(tmp_path / "pretrained")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["vae"]["pretrained"] = str(folder)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run_stage("ingest", project)
    run_stage("validate", project)
    metrics = run_stage("train_vae", project)
    assert metrics["vae"]["latent_shape"] == [6, 4, 4] and metrics["train"]["steps"] == 0  # its shape, not vae.*'s
    assert not list((project / "checkpoints").rglob("step_*"))  # nothing trained
    assert (project / "plots" / "train_vae_loss.csv").is_file()  # yet every out dvc.yaml declares is written
    saved, original = AutoencoderKL.from_pretrained(project / "models" / "vae"), AutoencoderKL.from_pretrained(folder)
    assert saved.config.scaling_factor == metrics["vae"]["latent_scale"] != original.config.scaling_factor
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), original.state_dict().values(), strict=True))
    run_stage("train_tokenizer", project)
    assert SelftokTokenizer.from_pretrained(project / "models" / "tokenizer").input_shape(1) == (1, 6, 4, 4)
