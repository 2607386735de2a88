"""Tiny tokenizer configs, VAEs and data shared by the tokenizer tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import torch

from selftok.tokenizer.params import RendererParams, TokenizerParams, VaeParams
from selftok.tokenizer.vae import build_vae, fit_latent_scaling, train_vae

# One block, no downsampling: 8x8 images -> 8x8 latents with 4 channels, so the tiny tokenizers
# keep the geometry they had on pixels and stay fast.
TINY_VAE = VaeParams(block_out_channels=(8,), latent_channels=4, norm_num_groups=4, batch_size=32, steps=300, lr=2e-2,
                     warmup_steps=5, scaling_images=256)
VAE_ENV = "SELFTOK_TEST_TINY_VAE"  # where a process left its tiny VAEs, for the processes it starts (accelerate launch)

TINY = {
    "image_size": 8,
    "num_tokens": 4,
    "codebook_size": 16,
    "code_dim": 4,
    "encoder_patch": 2,
    "decoder_patch": 2,
    "encoder_width": 16,
    "encoder_depth": 1,
    "decoder_width": 16,
    "decoder_depth": 2,
    "heads": 2,
    "mlp_ratio": 2.0,
}


def color_images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """uint8 [n, 3, size, size]: a random background colour with a random-coloured square in one of 4 places."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.randint(0, 4, (n, 3, 1, 1), generator=g) * 80).expand(n, 3, size, size).clone()
    half = size // 2
    for i in range(n):
        corner = int(torch.randint(0, 4, (1,), generator=g))
        y, x = (corner // 2) * half, (corner % 2) * half
        images[i, :, y : y + half, x : x + half] = torch.randint(0, 4, (3, 1, 1), generator=g) * 80
    return images.to(torch.uint8)


def _vae_root() -> Path:
    if VAE_ENV not in os.environ:
        root = tempfile.mkdtemp(prefix="selftok-tiny-vae-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        os.environ[VAE_ENV] = root
    return Path(os.environ[VAE_ENV])


def tiny_vae_path(trained: bool = False) -> str:
    """A tiny AutoencoderKL folder for 8x8 images, made once per pytest process: untrained (for the
    mechanics), or fitted to ``color_images`` for 300 steps (~23 dB, for tests that learn)."""
    folder = _vae_root() / ("trained" if trained else "untrained")
    if not (folder / "config.json").is_file():
        images = color_images(256)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            vae = build_vae(TINY_VAE, 8)
            if trained:
                train_vae(vae, images, TINY_VAE, seed=0, checkpoints=folder.with_name(folder.name + "_ckpt"))
        fit_latent_scaling(vae, images)
        vae.save_pretrained(folder)
    return str(folder)


def tiny_config(**overrides: object) -> dict[str, object]:
    """TINY with the untrained tiny VAE as its latent space (TokenizerConfig keywords)."""
    return {**TINY, "vae_path": tiny_vae_path(), **overrides}


def tiny_params(**overrides: object) -> TokenizerParams:
    arch = {k: v for k, v in TINY.items() if k not in ("image_size", "mlp_ratio")}
    return TokenizerParams(
        **{
            **arch,
            "vae_path": tiny_vae_path(),
            "batch_size": 16,
            "steps": 4,
            "warmup_steps": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "eval_every": 1000,
            **overrides,
        }
    )


def tiny_renderer_params(**overrides: object) -> RendererParams:
    return RendererParams(
        **{"batch_size": 16, "steps": 4, "warmup_steps": 1, "checkpoint_every": 2, "log_every": 1, "eval_every": 1000, **overrides}
    )
