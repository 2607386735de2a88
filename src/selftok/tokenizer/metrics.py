"""Reconstruction metrics on the 8-bit protocol, prefix curves and codebook usage.

8-bit protocol (docs/method.md): clamp to [-1, 1], quantise to uint8, then per image
PSNR = 20 log10(255) - 10 log10(MSE), averaged over images. SSIM is the standard
Gaussian-window SSIM (11x11, sigma 1.5) on the same uint8 images, averaged over channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from selftok.data.dataset import to_uint8, to_unit
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.quantizer import code_usage
from selftok.tokenizer.registry import AnyTokenizer

ImageFn = Callable[[torch.Tensor], torch.Tensor]  # codes -> images in [-1, 1]


def psnr_8bit(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR [B] of float images in [-1, 1] after the uint8 round trip."""
    a, b = to_uint8(pred).double(), to_uint8(target).double()
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 20 * math.log10(255.0) - 10 * torch.log10(mse)


def ssim_8bit(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM [B] on uint8-quantised images (valid-region Gaussian window, as skimage/Wang et al.)."""
    x, y = to_uint8(pred).double(), to_uint8(target).double()
    c = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).to(x.device)

    def blur(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v, kernel, groups=c)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return ssim.flatten(1).mean(1)


def prefix_lengths(num_tokens: int) -> list[int]:
    """1, 2, 4, ..., K (K included even when it is not a power of two)."""
    out, k = [], 1
    while k < num_tokens:
        out.append(k)
        k *= 2
    return [*out, num_tokens]


def batched(fn: ImageFn, codes: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([fn(codes[i : i + batch]).cpu() for i in range(0, len(codes), batch)])


@torch.no_grad()
def evaluate_tokenizer(
    model: SelftokTokenizer, images: torch.Tensor, decode_steps: int, prefix_steps: int, batch: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Diffusion-decoder metrics on uint8 images [N, 3, H, W]: full K, one step, no tokens, prefixes, usage."""
    model.eval()
    device = next(model.parameters()).device
    target = to_unit(images)
    codes = batched(lambda x: model.encode(x.to(device)), target, batch)
    k = model.config.num_tokens

    def psnr_of(**kwargs: Any) -> float:
        recon = batched(lambda c: model.decode(c.to(device), seed=seed, **kwargs), codes, batch)
        return float(psnr_8bit(recon, target).mean())

    usage = code_usage(codes, model.config.codebook_size)
    return {
        "psnr_diffusion": psnr_of(steps=decode_steps),
        "psnr_one_step": psnr_of(steps=1),
        "psnr_no_tokens": psnr_of(steps=decode_steps, prefix=0),
        "prefix_psnr": {str(n): psnr_of(steps=prefix_steps, prefix=n) for n in prefix_lengths(k)},
        "active_code_fraction": usage["active_code_fraction"],
        "min_position_perplexity": min(usage["perplexity_per_position"]),
        "perplexity_per_position": usage["perplexity_per_position"],
    }


@torch.no_grad()
def evaluate_renderer(model: AnyTokenizer, images: torch.Tensor, batch: int = 128) -> dict[str, Any]:
    """Renderer metrics: PSNR/SSIM with all K tokens, the renderer's prefix curve and codebook use.

    Uses only the API both tokenizers share, so the spatial control arm is scored by the same code."""
    model.eval()
    device = next(model.parameters()).device
    target = to_unit(images)
    codes = batched(lambda x: model.encode(x.to(device)), target, batch)
    full = batched(lambda c: model.render(c.to(device)), codes, batch)
    prefix = {
        str(n): float(psnr_8bit(batched(lambda c, n=n: model.render(c.to(device), prefix=n), codes, batch), target).mean())
        for n in prefix_lengths(model.config.num_tokens)
    }
    return {
        "psnr_renderer": float(psnr_8bit(full, target).mean()),
        "ssim_renderer": float(ssim_8bit(full, target).mean()),
        "prefix_psnr_renderer": prefix,
        "active_code_fraction": code_usage(codes, model.config.codebook_size)["active_code_fraction"],
    }
