"""The tokenizer's training tasks (encoder + quantiser + decoder jointly, then the renderer) on
the project's loop (selftok.training.loop).

Codebook EMA statistics and dead-code resets are reduced across ranks inside the quantiser.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from selftok.data.dataset import to_unit
from selftok.progress import track
from selftok.tokenizer.loss import decoded_pixel_loss
from selftok.tokenizer.model import SelftokTokenizer, StepOutput
from selftok.tokenizer.params import RendererParams, TokenizerParams
from selftok.tokenizer.renderer import Renderer
from selftok.tokenizer.schedule import sample_limits
from selftok.training.loop import Callbacks, LoopConfig, TrainResult, make_accelerator, run_loop, train_task


class TokenizerTask:
    """Joint encoder/quantiser/decoder training: flow-matching loss with the token schedule."""

    def __init__(self, model: SelftokTokenizer, images: torch.Tensor, params: TokenizerParams, device: torch.device) -> None:
        self.module = model
        self.images = images  # uint8 [N, 3, H, W], kept on CPU
        self.params = params
        self.device = device
        # The train set's latents, encoded once (float32 in RAM): the VAE never changes, so every step reads the same ones.
        self.latents = map_images(model.space.encode, images, device, desc="caching latents")

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Every trained part (encoder, quantiser projection, both decoder streams) at lr."""
        return [{"params": [p for p in self.module.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        p, model = self.params, self.module
        k = model.config.num_tokens
        x = self.latents[index].to(self.device)
        b = x.shape[0]
        if not bool(model.quantizer.initialized):
            with torch.no_grad():
                z = model.quantizer.project(model.encoder(x), batch_stats=True)
            model.quantizer.initialize(z, generator=generator)
        t = torch.rand(b, generator=generator)
        pure = torch.rand(b, generator=generator) < p.pure_noise_fraction
        t = torch.where(pure, torch.ones_like(t), t)
        limit = sample_limits(b, k, p.prefix_dropout, p.no_token_fraction, generator)
        limit = torch.where(pure, torch.full_like(limit, k), limit)  # autoencoding samples see every token
        noise = torch.randn(model.input_shape(b), generator=generator)
        out: StepOutput = wrapped(x, noise.to(self.device), t.to(self.device), limit.to(self.device))
        return out.loss.mean() + p.commitment_weight * out.commitment, out

    def after_step(self, aux: StepOutput, generator: torch.Generator) -> dict[str, float]:
        return {
            "decoder_mse": float(aux.loss.detach().mean()),
            "commitment": float(aux.commitment.detach()),
            **self.module.quantizer.ema_step(aux.z, aux.codes, generator),
        }


def train_tokenizer(
    model: SelftokTokenizer,
    images: torch.Tensor,
    params: TokenizerParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    def task_for(device: torch.device) -> TokenizerTask:
        return TokenizerTask(model.to(device), images, params, device)

    return train_task(task_for, len(images), params, seed, checkpoints, callbacks, accelerator)


class RenderObjective(nn.Module):
    """Renderer + frozen input space: (edge-weighted) pixel MSE per sample (what accelerate wraps)."""

    def __init__(self, renderer: Renderer, space: nn.Module, edge_weight: float = 0.0) -> None:
        super().__init__()
        self.renderer = renderer
        self.space = space
        self.edge_weight = edge_weight

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return decoded_pixel_loss(self.space.decode, self.renderer(tokens, visible), images, self.edge_weight)


class RendererTask:
    """Renderer training on the frozen tokenizer's codes: pixel MSE of prefix-masked token sets."""

    def __init__(
        self, *, objective: RenderObjective, codes: torch.Tensor, codebook: torch.Tensor, images: torch.Tensor,
        params: RendererParams, device: torch.device,
    ) -> None:
        self.module = objective
        self.codes, self.codebook, self.images = codes, codebook.to(device), images
        self.params, self.device = params, device

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.module.renderer.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        k = self.codes.shape[1]
        tokens = self.codebook[self.codes[index].to(self.device)]
        limit = sample_limits(len(index), k, self.params.prefix_dropout, 0.0, generator).to(self.device)
        visible = torch.arange(k, device=self.device)[None] < limit[:, None]
        mse = wrapped(tokens, visible, to_unit(self.images[index]).to(self.device))
        return mse.mean(), mse

    def after_step(self, aux: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        return {"pixel_mse": float(aux.detach().mean())}


@torch.no_grad()
def map_images(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device, batch: int = 256, desc: str = ""
) -> torch.Tensor:
    """``fn`` over uint8 images [N, 3, H, W] in batches (as [-1, 1] floats on ``device``), gathered on the CPU."""
    starts = track(range(0, len(images), batch), desc, enabled=bool(desc))
    return torch.cat([fn(to_unit(images[i : i + batch]).to(device)).cpu() for i in starts])


def encode_all(model: SelftokTokenizer, images: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] of uint8 images, in eval mode."""
    model.eval()
    return map_images(model.encode, images, next(model.parameters()).device, desc="encoding codes")


def train_renderer(
    model: SelftokTokenizer,
    images: torch.Tensor,
    params: RendererParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """Train ``model.renderer`` (created if absent) on the frozen tokenizer's codes of ``images``."""
    accelerator = accelerator or make_accelerator(params)
    model.to(accelerator.device).requires_grad_(False)
    codes = encode_all(model, images)
    if model.renderer is None:
        model.renderer = model.new_renderer(from_decoder=params.init_from_decoder)
    model.renderer.requires_grad_(True)
    objective = RenderObjective(model.renderer, model.space, params.edge_weight)
    task = RendererTask(objective=objective, codes=codes, codebook=model.quantizer.codebook, images=images, params=params,
                        device=accelerator.device)
    result = run_loop(task, len(images), params.lr, LoopConfig.from_params(params, seed), checkpoints, accelerator, callbacks)
    model.renderer.eval()
    return result
