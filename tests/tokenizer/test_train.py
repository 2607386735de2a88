"""Tiny end-to-end training: it learns, the tokens carry information, and a killed run resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizer_helpers import color_images, tiny_params, tiny_renderer_params, tiny_vae_path

from selftok.data.dataset import to_unit
from selftok.tokenizer.metrics import evaluate_renderer, psnr_8bit, ssim_8bit
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.train import train_renderer, train_tokenizer
from selftok.training.checkpoint import latest_checkpoint
from selftok.training.loop import Callbacks


def test_metrics_follow_the_8bit_protocol() -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.isinf(psnr_8bit(x, x)).sum() == 0  # MSE floor, no inf
    noisy = (x + 2 / 255).clamp(-1, 1)
    assert psnr_8bit(noisy, x).mean() > 40
    assert ssim_8bit(x, x).mean() == pytest.approx(1.0)
    assert ssim_8bit(torch.zeros_like(x), x).mean() < 0.5


def test_training_learns_and_tokens_beat_no_tokens(tmp_path: Path) -> None:
    torch.manual_seed(0)
    images = color_images(256)
    # x0 and a fast EMA make 8x8 toy images learnable in ~100 steps (the defaults need hundreds),
    # on the latents of a tiny VAE fitted to them.
    params = tiny_params(steps=120, lr=3e-3, warmup_steps=5, checkpoint_every=1000, log_every=10, pure_noise_fraction=0.5,
                         prefix_dropout=0.0, objective="x0", ema_decay=0.9, vae_path=tiny_vae_path(trained=True))
    model = SelftokTokenizer(params.architecture(8))
    logged: list[int] = []
    result = train_tokenizer(model, images, params, seed=0, checkpoints=tmp_path / "ckpt",
                             callbacks=Callbacks(on_log=lambda step, logs: logged.append(step)))
    assert logged == list(range(10, 121, 10))
    first, last = result.history[0]["decoder_mse"], result.history[-1]["decoder_mse"]
    assert last < 0.8 * first
    model.eval()
    x = to_unit(images[:64])
    codes = model.encode(x)
    with_tokens = psnr_8bit(model.decode(codes, steps=1), x).mean()
    without = psnr_8bit(model.decode(codes, steps=1, prefix=0), x).mean()
    assert with_tokens > without + 0.5, (with_tokens, without)
    # renderer on the frozen tokens, starting from the decoder's one-step estimate
    model.renderer = model.new_renderer(from_decoder=True)
    before_psnr = evaluate_renderer(model, images[:64])["psnr_renderer"]
    frozen = model.encoder.embed.weight.clone()
    rparams = tiny_renderer_params(steps=60, lr=1e-3, checkpoint_every=1000, log_every=10)
    train_renderer(model, images, rparams, seed=0, checkpoints=tmp_path / "rckpt")
    assert torch.equal(model.encoder.embed.weight, frozen), "the tokenizer stays frozen"
    after = evaluate_renderer(model, images[:64])
    assert after["psnr_renderer"] > max(before_psnr, float(without)), (after, before_psnr, without)


class Killed(Exception):
    pass


def _kill_at(step: int) -> Callbacks:
    def on_log(done: int, logs: dict[str, float]) -> None:
        if done == step:
            raise Killed

    return Callbacks(on_log=on_log)


def test_a_killed_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    images = color_images(64)
    params = tiny_params(steps=5, checkpoint_every=2)

    def fresh() -> SelftokTokenizer:
        torch.manual_seed(0)
        return SelftokTokenizer(params.architecture(8))

    reference = fresh()
    train_tokenizer(reference, images, params, seed=0, checkpoints=tmp_path / "ref")
    with pytest.raises(Killed):
        train_tokenizer(fresh(), images, params, seed=0, checkpoints=tmp_path / "run", callbacks=_kill_at(3))
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    resumed = fresh()
    result = train_tokenizer(resumed, images, params, seed=0, checkpoints=tmp_path / "run")
    assert result.resumed_from == 2 and result.steps == 5
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["step_0000005"]
