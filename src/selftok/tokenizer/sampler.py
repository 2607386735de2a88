"""Euler ODE decoding with the visible-token mask recomputed at every step.

Runs on diffusers' FlowMatchEulerDiscreteScheduler. Its sigma is exactly our t (sigma = 1 is
pure noise, x = sigma * eps + (1 - sigma) * x0) and its step is ``x + (sigma_next - sigma) * v``
with v = eps - x0, our velocity. We pass the sigmas explicitly (shift 1) so that
``steps`` equal steps go from t = 1 to t = 0.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from selftok.tokenizer.schedule import ScheduleKind, first_visible, visible_mask

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t, visible) -> v


def flow_scheduler(steps: int) -> FlowMatchEulerDiscreteScheduler:
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1].tolist())
    return scheduler


@torch.no_grad()
def euler_decode(
    velocity: VelocityFn,
    noise: torch.Tensor,
    steps: int,
    num_tokens: int,
    schedule: ScheduleKind,
    limit: torch.Tensor,
) -> torch.Tensor:
    """Integrate from ``noise`` (t=1) to t=0; ``limit`` [B] ends the visible range (prefix decode)."""
    scheduler = flow_scheduler(steps)
    x = noise
    for sigma, timestep in zip(scheduler.sigmas[:-1], scheduler.timesteps, strict=True):
        t = torch.full((x.shape[0],), float(sigma), device=x.device)
        visible = visible_mask(first_visible(t, num_tokens, schedule), limit.to(x.device), num_tokens)
        x = scheduler.step(velocity(x, t, visible), timestep, x).prev_sample
    return x
