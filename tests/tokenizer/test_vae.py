"""The trained latent space: shapes, fitted latent statistics, learning, resume, and use by the tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from pydantic import ValidationError
from tokenizer_helpers import TINY, color_images, tiny_params

from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.params import VaeParams
from selftok.tokenizer.space import VaeSpace
from selftok.tokenizer.train import train_tokenizer
from selftok.tokenizer.vae import build_vae, fit_latent_scaling, latent_modes, reconstruct, train_vae
from selftok.training.checkpoint import latest_checkpoint
from selftok.training.loop import Callbacks


def tiny_vae_params(**overrides: object) -> VaeParams:
    return VaeParams(**{"block_out_channels": (8, 8), "latent_channels": 4, "norm_num_groups": 4, "batch_size": 16,
                        "steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "scaling_images": 64, **overrides})


def test_shapes_and_bad_configs() -> None:
    vae = build_vae(VaeParams(), 32)
    assert latent_modes(vae, torch.zeros(3, 3, 32, 32, dtype=torch.uint8)).shape == (3, 8, 8, 8)
    with pytest.raises(ValueError, match="not divisible by the VAE's downsampling 4"):
        build_vae(VaeParams(), 30)
    with pytest.raises(ValidationError, match=r"block_out_channels \[24\] are not divisible by norm_num_groups 16"):
        VaeParams(block_out_channels=(16, 24))


def test_fitted_scaling_gives_unit_latents() -> None:
    torch.manual_seed(0)
    vae = build_vae(tiny_vae_params(), 8)
    images = color_images(64)
    shift, scale = fit_latent_scaling(vae, images)
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (shift, scale)
    z = VaeSpace(vae, 8).encode(images.float() / 127.5 - 1)
    assert abs(float(z.mean())) < 1e-4 and float(z.std()) == pytest.approx(1.0, rel=1e-3)


def test_training_learns(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = color_images(256)
    params = tiny_vae_params(block_out_channels=(16, 16), norm_num_groups=8, steps=150, lr=1e-2, checkpoint_every=1000, log_every=10)
    vae = build_vae(params, 8)
    before = float((reconstruct(vae, images[:64]) - (images[:64].float() / 127.5 - 1)).pow(2).mean())
    result = train_vae(vae, images, params, seed=0, checkpoints=tmp_path / "ckpt")
    after = float((reconstruct(vae, images[:64]) - (images[:64].float() / 127.5 - 1)).pow(2).mean())
    assert result.history[-1]["recon_mse"] < 0.5 * result.history[0]["recon_mse"]
    assert after < 0.5 * before, (before, after)


class Killed(Exception):
    pass


def test_a_killed_run_resumes_exactly(tmp_path: Path) -> None:
    images, params = color_images(64), tiny_vae_params(steps=5)

    def fresh() -> AutoencoderKL:
        torch.manual_seed(0)
        return build_vae(params, 8)

    def kill(done: int, logs: dict[str, float]) -> None:
        if done == 3:
            raise Killed

    reference = fresh()
    train_vae(reference, images, params, seed=0, checkpoints=tmp_path / "ref")
    with pytest.raises(Killed):
        train_vae(fresh(), images, params, seed=0, checkpoints=tmp_path / "run", callbacks=Callbacks(on_log=kill))
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    resumed = fresh()
    assert train_vae(resumed, images, params, seed=0, checkpoints=tmp_path / "run").resumed_from == 2
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_tokenizer_reads_the_trained_latents(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vae = build_vae(tiny_vae_params(), 8)
    fit_latent_scaling(vae, color_images(64))
    vae.save_pretrained(tmp_path / "vae")
    arch = {k: v for k, v in TINY.items() if k not in ("encoder_patch", "decoder_patch")}
    config = TokenizerConfig(**arch, vae_path=str(tmp_path / "vae"), encoder_patch=1, decoder_patch=1)
    model = SelftokTokenizer(config)
    assert model.input_shape(2) == (2, 4, 4, 4)
    assert model.space.shift == vae.config.shift_factor and model.space.scale == vae.config.scaling_factor
    images = color_images(4).float() / 127.5 - 1
    codes = model.encode(images)
    assert codes.shape == (4, TINY["num_tokens"]) and model.decode(codes, steps=2).shape == (4, 3, 8, 8)
    pinned = SelftokTokenizer(dataclasses.replace(config, vae_shift=0.0, vae_scale=2.0))
    assert (pinned.space.shift, pinned.space.scale) == (0.0, 2.0)


def test_the_train_set_is_encoded_once_before_the_first_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The VAE is frozen, so its latents of the train set are computed once and every step reads them."""
    images = color_images(64, seed=1)
    calls: list[int] = []
    encode = VaeSpace.encode
    monkeypatch.setattr(VaeSpace, "encode", lambda self, x: calls.append(len(x)) or encode(self, x))
    params = tiny_params()
    torch.manual_seed(0)
    model = SelftokTokenizer(params.architecture(8))
    train_tokenizer(model, images, params, seed=0, checkpoints=tmp_path / "ckpt")
    assert calls == [64]
