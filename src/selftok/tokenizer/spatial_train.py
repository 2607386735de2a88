"""Training of the spatial control tokenizer on the shared loop (checkpoints, resume, accelerate).

Loss: pixel MSE of the deterministic decode + commitment; the codebook moves by EMA after each
step, exactly as for Selftok. A ``prefix_dropout`` fraction of samples sees only a random
raster prefix of its codes (the rest masked), mirroring Selftok's nested prefix dropout so both
tokenizers are trained to decode prefixes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from selftok.data.dataset import to_unit
from selftok.tokenizer.schedule import sample_limits
from selftok.tokenizer.spatial import SpatialStep, SpatialTokenizer
from selftok.tokenizer.spatial_params import SpatialParams
from selftok.training.loop import Callbacks, TrainResult, train_task


class SpatialTask:
    """The ``train.Task`` of the spatial tokenizer: one parameter group, codebook EMA after each step."""

    def __init__(self, model: SpatialTokenizer, images: torch.Tensor, params: SpatialParams, device: torch.device) -> None:
        self.module = model
        self.images = images  # uint8 [N, 3, H, W], kept on CPU
        self.params = params
        self.device = device

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.module.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        model, p = self.module, self.params
        x = to_unit(self.images[index]).to(self.device)
        if not bool(model.quantizer.initialized):
            with torch.no_grad():
                z = model.quantizer.project(model.encoder(x), batch_stats=True)
            model.quantizer.initialize(z, generator=generator)
        limit = sample_limits(len(index), model.config.num_tokens, p.prefix_dropout, 0.0, generator)
        out: SpatialStep = wrapped(x, limit.to(self.device), p.edge_weight)
        return out.loss.mean() + p.commitment_weight * out.commitment, out

    def after_step(self, aux: SpatialStep, generator: torch.Generator) -> dict[str, float]:
        return {
            "pixel_mse": float(aux.loss.detach().mean()),
            "commitment": float(aux.commitment.detach()),
            **self.module.quantizer.ema_step(aux.z, aux.codes, generator),
        }


def train_spatial(
    model: SpatialTokenizer,
    images: torch.Tensor,
    params: SpatialParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """Train ``model`` on uint8 images [N, 3, H, W] to ``params.steps``, resuming from ``checkpoints``."""
    def task_for(device: torch.device) -> SpatialTask:
        return SpatialTask(model.to(device), images, params, device)

    result = train_task(task_for, len(images), params, seed, checkpoints, callbacks, accelerator)
    model.eval()
    return result
