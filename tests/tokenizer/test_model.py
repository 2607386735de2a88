"""Masking, quantiser, renderer init, sampler convention and save/load of the tokenizer."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.loss import decoded_pixel_loss
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.quantizer import Quantizer, code_usage
from selftok.tokenizer.sampler import euler_decode
from selftok.tokenizer.schedule import first_visible, visible_mask


def _perturbed_model(config: TokenizerConfig) -> SelftokTokenizer:
    """A model whose zero-initialised layers are randomised, so every path carries signal."""
    torch.manual_seed(0)
    model = SelftokTokenizer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def test_hidden_tokens_do_not_change_the_decoder(tiny_config: TokenizerConfig) -> None:
    model = _perturbed_model(tiny_config)
    b, k = 3, tiny_config.num_tokens
    x = torch.randn(model.input_shape(b))
    t = torch.tensor([0.9, 0.5, 0.1])
    tokens = torch.randn(b, k, tiny_config.code_dim)
    visible = torch.tensor([[True, True, True, True], [False, True, True, True], [False, False, False, True]])
    out = model.decoder(x, t, tokens, visible)
    changed = torch.where(visible[..., None], tokens, torch.randn_like(tokens) * 10)
    assert torch.allclose(model.decoder(x, t, changed, visible), out, atol=1e-6)
    # ... while a visible token does matter
    other = tokens.clone()
    other[:, 3] += 1.0
    assert not torch.allclose(model.decoder(x, t, other, visible), out, atol=1e-4)


def test_quantizer_round_trip_and_straight_through(tiny_config: TokenizerConfig) -> None:
    q = Quantizer(8, tiny_config)
    codes = torch.randint(0, tiny_config.codebook_size, (5, tiny_config.num_tokens))
    assert torch.equal(q.nearest(q.lookup(codes)), codes)
    h = torch.randn(5, tiny_config.num_tokens, 8, requires_grad=True)
    out = q(h)
    assert torch.allclose(out.quantized, q.lookup(out.codes), atol=1e-6)
    out.quantized.sum().backward()
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_ema_update_moves_codes_towards_their_vectors(tiny_config: TokenizerConfig) -> None:
    q = Quantizer(8, dataclasses.replace(tiny_config, dead_threshold=0.0))
    z = torch.nn.functional.normalize(torch.randn(64, tiny_config.code_dim), dim=-1)[None]
    q.initialize(z)
    assert bool(q.initialized)
    target = torch.nn.functional.normalize(torch.ones(tiny_config.code_dim), dim=0)
    codes = torch.zeros(1, 64, dtype=torch.long)
    before = float(q.codebook[0] @ target)
    for _ in range(50):
        q.update(target.expand(1, 64, -1), codes)
    assert float(q.codebook[0] @ target) > max(before, 0.99)


def test_dead_codes_are_reset_to_batch_vectors(tiny_config: TokenizerConfig) -> None:
    q = Quantizer(8, tiny_config)
    z = torch.nn.functional.normalize(torch.randn(1, 256, tiny_config.code_dim), dim=-1)
    q.initialize(z)
    used = torch.zeros(1, 256, dtype=torch.long)  # only code 0 is ever used
    resets = sum(q.update(z, used) for _ in range(300))
    assert resets >= tiny_config.codebook_size - 1
    # reset codes are batch vectors: each matches some z almost exactly
    best = (q.codebook[1:] @ z[0].T).max(dim=1).values
    assert (best > 0.99).float().mean() > 0.5
    assert q.alive_fraction() > 0.5


def test_code_usage() -> None:
    codes = torch.tensor([[0, 1], [0, 2], [0, 3], [0, 4]])
    usage = code_usage(codes, 10)
    assert usage["active_code_fraction"] == 0.5
    assert usage["perplexity_per_position"][0] == pytest.approx(1.0)
    assert usage["perplexity_per_position"][1] == pytest.approx(4.0)


def test_euler_convention_recovers_x0_with_the_true_velocity() -> None:
    """Our t is the scheduler's sigma: with v = eps - x0 the Euler path lands on x0 exactly."""
    x0, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    seen: list[float] = []

    def velocity(x: torch.Tensor, t: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        seen.append(float(t[0]))
        assert torch.allclose(x, t.view(-1, 1, 1, 1) * eps + (1 - t.view(-1, 1, 1, 1)) * x0, atol=1e-5)
        assert visible.shape == (2, 8)
        return eps - x0

    out = euler_decode(velocity, eps, steps=4, num_tokens=8, schedule="custom", limit=torch.full((2,), 8))
    assert torch.allclose(out, x0, atol=1e-5)
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_renderer_starts_as_the_one_step_decoder(tiny_config: TokenizerConfig) -> None:
    model = _perturbed_model(tiny_config)
    renderer = model.new_renderer(from_decoder=True)
    tokens = torch.randn(2, tiny_config.num_tokens, tiny_config.code_dim)
    visible = torch.ones(2, tiny_config.num_tokens, dtype=torch.bool)
    v = model.decoder(torch.zeros(model.input_shape(2)), torch.ones(2), tokens, visible)
    assert torch.allclose(renderer(tokens), -v, atol=1e-5)  # x0 = x_t - v at t = 1 with x_t = 0


@pytest.mark.parametrize("objective", ["velocity", "x0"])
def test_training_loss_is_the_mse_to_the_objective_target(tiny_config: TokenizerConfig, objective: str) -> None:
    """Plain MSE on latents per sample, against noise - x0 (velocity) or x0, through the schedule's mask."""
    config = dataclasses.replace(tiny_config, objective=objective)
    model = _perturbed_model(config).train()
    x0 = torch.randn(model.input_shape(4))
    noise, t, limit = torch.randn_like(x0), torch.tensor([1.0, 0.5, 1.0, 0.2]), torch.tensor([4, 4, 2, 0])
    out = model(x0, noise, t, limit)
    quant = model.quantizer(model.encoder(x0))
    x_t = t.view(-1, 1, 1, 1) * noise + (1 - t.view(-1, 1, 1, 1)) * x0
    visible = visible_mask(first_visible(t, config.num_tokens, config.schedule), limit, config.num_tokens)
    target = noise - x0 if objective == "velocity" else x0
    expected = (model.decoder(x_t, t, quant.quantized, visible) - target).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(out.loss, expected)
    out.loss.sum().backward()
    assert model.encoder.embed.weight.grad is not None and model.encoder.embed.weight.grad.abs().sum() > 0


def test_save_and_load_give_identical_outputs(tiny_config: TokenizerConfig, tmp_path: Path) -> None:
    model = _perturbed_model(tiny_config)
    model.renderer = model.new_renderer()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    codes = model.encode(images)
    assert codes.shape == (3, tiny_config.num_tokens) and codes.dtype == torch.long
    model.save_pretrained(tmp_path / "tok")
    model.save_renderer(tmp_path / "ren")
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))
    loaded = SelftokTokenizer.from_pretrained(tmp_path / "tok", renderer=tmp_path / "ren")
    assert dataclasses.replace(loaded.config, vae_path=None) == dataclasses.replace(model.config, vae_path=None)
    assert loaded.config.vae_path == str(tmp_path / "tok" / "vae")  # the folder carries its own copy of the VAE
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes, steps=3, seed=1), model.decode(codes, steps=3, seed=1))
    assert torch.equal(loaded.decode(codes, steps=3, prefix=1, seed=1), model.decode(codes, steps=3, prefix=1, seed=1))
    assert torch.equal(loaded.render(codes), model.render(codes))
    with pytest.raises(ValueError):
        SelftokTokenizer.from_pretrained(tmp_path / "ren", renderer=tmp_path / "tok")


def test_the_encoder_embeds_latent_patches_linearly(tiny_config: TokenizerConfig) -> None:
    """One feature per patch of the latent grid, from one linear map (``encoder.embed``)."""
    model = SelftokTokenizer(tiny_config)
    latents = torch.randn(model.input_shape(2))
    patches = (model.space.size // tiny_config.encoder_patch) ** 2
    assert model.encoder.embed(latents).shape == (2, patches, tiny_config.encoder_width)
    assert model.encoder(latents).shape == (2, tiny_config.num_tokens, tiny_config.encoder_width)
    state = model.state_dict()
    assert "encoder.embed.weight" in state and "encoder.embed.bias" in state


def test_vae_input_space(tiny_config: TokenizerConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny randomly initialised AutoencoderKL from a local folder: /2 latents with 4 channels,
    normalised by the shift and scale of its own config (SD3's values here)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, sample_size=16, shift_factor=0.0609, scaling_factor=1.5305,
    )
    vae.save_pretrained(tmp_path / "vae")
    config = dataclasses.replace(tiny_config, image_size=16, vae_path=str(tmp_path / "vae"))
    model = SelftokTokenizer(config)
    assert model.input_shape(2) == (2, 4, 8, 8)
    assert not any(p.requires_grad for p in model.space.parameters())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = model.space.encode(images)
    expected = (vae.encode(images).latent_dist.mode() - 0.0609) * 1.5305
    assert torch.allclose(z, expected, atol=1e-5)
    codes = model.encode(images)
    assert model.decode(codes, steps=2).shape == (2, 3, 16, 16)
    # the renderer's pixel loss is on the VAE's decode: gradients pass the frozen VAE to the renderer
    renderer = model.new_renderer()
    visible = torch.ones(2, config.num_tokens, dtype=torch.bool)
    decoded_pixel_loss(model.space.decode, renderer(model.tokens(codes), visible), images, 4.0).sum().backward()
    assert renderer.net.final.linear.weight.grad is not None and renderer.net.final.linear.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.space.parameters())
    model.save_pretrained(tmp_path / "tok")
    assert not any("vae" in k for k in __import__("safetensors.torch").torch.load_file(str(tmp_path / "tok" / "model.safetensors")))
    # the folder carries its own copy of the VAE and finds it from any working directory
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["vae_path"] == "vae"
    assert "_name_or_path" not in json.loads((tmp_path / "tok" / "vae" / "config.json").read_text())
    shutil.rmtree(tmp_path / "vae")
    monkeypatch.chdir(tmp_path)  # where a cwd-relative "vae" would now be missing
    loaded = SelftokTokenizer.from_pretrained("tok")
    assert torch.equal(loaded.encode(images), codes)
    loaded.renderer = loaded.new_renderer()
    loaded.save_renderer(tmp_path / "ren")  # a copy of a copy: the bytes of the VAE are the same
    torch.testing.assert_close(SelftokTokenizer.from_pretrained("tok", renderer="ren").render(codes), loaded.render(codes))
    # a renderer trained over another VAE is refused
    with torch.no_grad():
        loaded.space.vae.decoder.conv_out.bias.add_(1.0)
    loaded.save_renderer(tmp_path / "other")
    with pytest.raises(ValueError, match="not a renderer for the tokenizer"):
        SelftokTokenizer.from_pretrained("tok", renderer="other")
