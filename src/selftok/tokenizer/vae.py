"""The latent space the tokenizer reads and denoises: a small diffusers AutoencoderKL trained on the data.

The paper's tokenizer works on SD3-VAE latents. ``vae.pretrained`` names any diffusers
AutoencoderKL (a hub id or a local folder; SD3's is 16 channels, 8x downsampling) that is then
only loaded and has its latent statistics fitted. No such VAE exists for 32x32 scenes and nothing
downloads here, so by default ``train_vae`` trains one: diffusers' conv encoder/decoder with a diagonal
Gaussian latent, pixel MSE plus a small KL term. The latent statistics are stored the SD3 way,
as the config's ``shift_factor`` and ``scaling_factor`` (latent = (z - shift) * scale, unit
variance), which is what ``selftok.tokenizer.space.VaeSpace`` applies.

Why a latent space at our scale too: on raw pixels the tokenizer's encoder never learns shape
(its patch features hold colour, not outline; docs/experiments.md). A conv autoencoder's
latents carry local outline features, so the same encoder reads shapes from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL
from torch import nn

from selftok.data.dataset import to_unit
from selftok.errors import ConfigError
from selftok.tokenizer.params import VaeParams
from selftok.training.loop import Callbacks, TrainResult, train_task


def build_vae(params: VaeParams, image_size: int) -> AutoencoderKL:
    """A fresh AutoencoderKL of ``params``' shape, convolutions only (the prototype's choice: at
    32x32 mid-block attention changes a step's time by 2%; the widths are what cost)."""
    if image_size % params.downsampling():
        raise ValueError(f"image_size {image_size} is not divisible by the VAE's downsampling {params.downsampling()}")
    blocks = len(params.block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=params.block_out_channels,
        layers_per_block=params.layers_per_block,
        latent_channels=params.latent_channels,
        norm_num_groups=params.norm_num_groups,
        sample_size=image_size,
        mid_block_add_attention=False,
    )


def vae_downsampling(vae: AutoencoderKL) -> int:
    """Image side / latent side of a diffusers AutoencoderKL: one halving per block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def load_pretrained_vae(params: VaeParams, image_size: int) -> AutoencoderKL:
    """``vae.pretrained`` as an fp32 AutoencoderKL, checked against ``vae.expected`` and the image size.

    A local folder is read as is; anything else is a hub id for diffusers' from_pretrained, which
    uses its cache and fails offline, naming the id."""
    ref = str(params.pretrained)
    local = Path(ref).is_dir()
    try:
        vae = AutoencoderKL.from_pretrained(ref, subfolder=params.subfolder, local_files_only=local, torch_dtype=torch.float32)
    except (OSError, ValueError) as error:
        where = "local folder" if local else "hub id (not in the local cache, and downloads are off here)"
        raise ConfigError(f"vae.pretrained {ref!r}: cannot load this {where}: {str(error).splitlines()[0]}") from None
    wrong = params.expected.mismatches(vae.config) if params.expected is not None else []
    if wrong:
        raise ConfigError(f"vae.pretrained {ref!r} is not the VAE the params expect: " + "; ".join(wrong))
    if image_size % vae_downsampling(vae):
        raise ConfigError(f"data.image_size {image_size} is not divisible by vae.pretrained's downsampling {vae_downsampling(vae)}")
    return vae.eval()


class VaeObjective(nn.Module):
    """Per-sample reconstruction MSE and KL of one forward (what accelerate wraps)."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample(generator=generator)).sample
        return F.mse_loss(recon, images, reduction="none").flatten(1).mean(1), posterior.kl() / images[0].numel()


class VaeTask:
    """The ``train.Task`` of the autoencoder: MSE + kl_weight x KL (per pixel), one parameter group."""

    def __init__(self, vae: AutoencoderKL, images: torch.Tensor, params: VaeParams, device: torch.device) -> None:
        self.module = VaeObjective(vae)
        self.images = images  # uint8 [N, 3, H, W], kept on CPU
        self.params = params
        self.device = device

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.module.parameters()), "lr": lr}]

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        mse, kl = wrapped(to_unit(self.images[index]).to(self.device), generator)
        return mse.mean() + self.params.kl_weight * kl.mean(), (mse.detach(), kl.detach())

    def after_step(self, aux: tuple[torch.Tensor, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        mse, kl = aux
        return {"recon_mse": float(mse.mean()), "kl_per_pixel": float(kl.mean())}


@torch.no_grad()
def latent_modes(vae: AutoencoderKL, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unscaled latent means [N, C, h, w] of uint8 images."""
    vae.eval()
    device = next(vae.parameters()).device
    return torch.cat([vae.encode(to_unit(images[i : i + batch]).to(device)).latent_dist.mode().cpu() for i in range(0, len(images), batch)])


def fit_latent_scaling(vae: AutoencoderKL, images: torch.Tensor) -> tuple[float, float]:
    """Set the config's shift_factor / scaling_factor so that latents of ``images`` have mean 0, std 1."""
    z = latent_modes(vae, images)
    shift, scale = float(z.mean()), 1.0 / float(z.std().clamp_min(1e-6))
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return shift, scale


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """uint8 images -> reconstructions in [-1, 1] through the latent mean."""
    z = latent_modes(vae, images, batch)
    device = next(vae.parameters()).device
    return torch.cat([vae.decode(z[i : i + batch].to(device)).sample.clamp(-1, 1).cpu() for i in range(0, len(z), batch)])


def train_vae(
    vae: AutoencoderKL,
    images: torch.Tensor,
    params: VaeParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """Train ``vae`` on uint8 images [N, 3, H, W] to ``params.steps``, resuming from ``checkpoints``."""
    def task_for(device: torch.device) -> VaeTask:
        return VaeTask(vae.to(device), images, params, device)

    result = train_task(task_for, len(images), params, seed, checkpoints, callbacks, accelerator)
    vae.eval()
    return result
