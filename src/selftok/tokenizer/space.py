"""The space the tokenizer works in: the latents of a frozen diffusers AutoencoderKL.

Images enter and leave as float [-1, 1] [B, 3, H, W]; the space maps them to what the encoder
reads and the decoder produces: latents carry the local outline features the encoder's patches
need to code shape. The VAE is loaded from a LOCAL folder only (nothing downloads) and its
weights are not part of the tokenizer's own safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn

from selftok.tokenizer.arch import TokenizerConfig


class VaeSpace(nn.Module):
    """SD3-style latents: ``(mode(z) - shift) * scale``; the VAE stays frozen and in eval mode.

    ``shift`` and ``scale`` default to the VAE config's ``shift_factor`` and ``scaling_factor``
    (the SD3 VAE ships 0.0609 and 1.5305; ``train_vae`` fits them to the data)."""

    def __init__(self, vae: AutoencoderKL, image_size: int, shift: float | None = None, scale: float | None = None) -> None:
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not divisible by the VAE's downsampling {factor}")
        self.channels, self.size = vae.config.latent_channels, image_size // factor
        self.shift = shift if shift is not None else (vae.config.shift_factor or 0.0)
        self.scale = scale if scale is not None else vae.config.scaling_factor

    def train(self, mode: bool = True) -> VaeSpace:
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return ((z - self.shift) * self.scale).float()

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable (the renderer's pixel loss flows through the frozen decoder)."""
        return self.vae.decode((x / self.scale + self.shift).to(self.vae.dtype)).sample.float()


def load_vae(path: str | Path) -> AutoencoderKL:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: VAE folder not found (a local diffusers AutoencoderKL is required; nothing is downloaded)")
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True)


def build_space(config: TokenizerConfig) -> VaeSpace:
    if config.vae_path is None:
        raise ValueError("the tokenizer needs vae_path (a local diffusers AutoencoderKL folder)")
    return VaeSpace(load_vae(config.vae_path), config.image_size, config.vae_shift, config.vae_scale)
