"""Stage train_vae: the autoencoder whose latents the tokenizer reads (``tokenizer.vae_path``).

Outs: the VAE (a diffusers AutoencoderKL folder, safetensors, with the fitted latent
shift_factor / scaling_factor), its checkpoints (persisted, for resume) and the loss plot. Metrics: 8-bit PSNR / SSIM of val reconstructions through the latent
mean, the latent shape and its fitted statistics. The VAE is logged to MLflow as an artifact,
not registered: every tokenizer trained on it carries its own copy (``SelftokTokenizer.save_pretrained``).

With ``vae.pretrained`` (SD3's VAE in the paper) nothing trains: the VAE is loaded, its latent
statistics are fitted on the data and it is written to the same folder, so what reads it is unchanged.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from selftok import paths
from selftok.data.dataset import IMAGE_TRAINING, load_split, to_unit
from selftok.stages.base import Metrics, StageContext
from selftok.tokenizer.grids import image_grid
from selftok.tokenizer.metrics import psnr_8bit, ssim_8bit
from selftok.tokenizer.vae import build_vae, fit_latent_scaling, load_pretrained_vae, reconstruct, train_vae, vae_downsampling
from selftok.training.history import history_logger, read_history
from selftok.training.loop import make_accelerator


def trained(ctx: StageContext, train: torch.Tensor, val: torch.Tensor) -> tuple[AutoencoderKL | None, dict]:
    """Our own VAE trained to ``vae.steps`` (None on ranks other than the main one)."""
    p, seed, size = ctx.params.vae, ctx.params.seed, ctx.params.data.image_size
    vae = build_vae(p, size)
    checkpoints = ctx.path(paths.VAE_CHECKPOINTS)
    accelerator = make_accelerator(p)
    callbacks = history_logger(checkpoints, ctx.logger("train"), trim=ctx.tracked)

    def on_eval(step: int) -> None:
        originals = val[: p.grid_images]
        ctx.log_image(image_grid([to_unit(originals), reconstruct(vae, originals)]), f"grids/step_{step:06d}.png")

    callbacks.on_eval = on_eval
    result = train_vae(vae, train, p, seed, checkpoints, callbacks if accelerator.is_main_process else None, accelerator)
    if not accelerator.is_main_process:
        return None, {}
    ctx.write_plot("train_vae_loss", read_history(checkpoints))
    return vae, result.summary()


def pretrained(ctx: StageContext) -> AutoencoderKL:
    """``vae.pretrained`` loaded onto the GPU when there is one (fitting its statistics is inference)."""
    vae = load_pretrained_vae(ctx.params.vae, ctx.params.data.image_size)
    return vae.to("cuda" if torch.cuda.is_available() else "cpu")


def run(ctx: StageContext) -> Metrics:
    p, size = ctx.params.vae, ctx.params.data.image_size
    train = load_split(ctx.root, IMAGE_TRAINING).images
    val = load_split(ctx.root, "val", limit=p.val_images).images
    if p.pretrained is not None:
        vae, summary = pretrained(ctx), {"steps": 0, "pretrained": p.pretrained}
        ctx.write_plot("train_vae_loss", [])  # nothing trained, but DVC requires every declared out: an empty curve
    else:
        vae, summary = trained(ctx, train, val)
    if vae is None:
        return {}
    shift, scale = fit_latent_scaling(vae, train[: p.scaling_images])
    vae.save_pretrained(ctx.path(paths.VAE))
    recon, target = reconstruct(vae, val), to_unit(val)
    ctx.log_artifact(ctx.path(paths.VAE), "vae")
    latent = size // vae_downsampling(vae)
    return {
        "vae": {
            "psnr": float(psnr_8bit(recon, target).mean()),
            "ssim": float(ssim_8bit(recon, target).mean()),
            "latent_shape": [vae.config.latent_channels, latent, latent],
            "latent_shift": shift,
            "latent_scale": scale,
            "params_millions": sum(q.numel() for q in vae.parameters()) / 1e6,
        },
        "train": summary,
    }
