"""Cosine-similarity vector quantiser with an EMA codebook and dead-code resets.

Vectors are projected to a small dim and l2-normalised; the code is the most cosine-similar
codebook entry. The codebook is a buffer moved by EMA of the assigned vectors, never by
gradient, which keeps it in step with a fast-moving encoder. Every statistic that moves the
codebook is all-reduced (and every random choice broadcast from rank 0) so that data-parallel
processes keep identical codebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from selftok.tokenizer.arch import TokenizerConfig


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In place sum over processes (no-op in a single process)."""
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def broadcast(tensor: torch.Tensor) -> torch.Tensor:
    """In place copy of rank 0's tensor to every process (no-op in a single process)."""
    if _distributed():
        dist.broadcast(tensor, src=0)
    return tensor


class CodeNorm(nn.Module):
    """Per-feature standardisation (batch norm without affine) on [N, F].

    Training steps normalise with the batch's statistics and update the running statistics from
    moments averaged over processes (so data-parallel ranks keep identical buffers); encoding
    uses the running statistics, so a code never depends on the rest of the batch.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))

    def forward(self, x: torch.Tensor, batch_stats: bool) -> torch.Tensor:
        if batch_stats:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            with torch.no_grad():
                world = dist.get_world_size() if _distributed() else 1
                moments = all_reduce_sum(torch.stack([mean, var + mean.square()])) / world
                self.running_mean.lerp_(moments[0], self.momentum)
                self.running_var.lerp_(moments[1] - moments[0].square(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) / torch.sqrt(var + self.eps)


@dataclass
class Quantized:
    z: torch.Tensor  # [B, K, d] normalised encoder vectors (before quantisation)
    codes: torch.Tensor  # [B, K] long
    quantized: torch.Tensor  # [B, K, d] codebook vectors with straight-through gradient to z
    commitment: torch.Tensor  # scalar MSE between z and its (frozen) code


class Quantizer(nn.Module):
    def __init__(self, width: int, config: TokenizerConfig) -> None:
        super().__init__()
        size, dim = config.codebook_size, config.code_dim
        self.decay = config.ema_decay
        self.dead_threshold = config.dead_threshold
        self.proj = nn.Linear(width, dim)
        # Per (position, dim) statistics; no affine: the sphere projection follows anyway.
        self.norm = CodeNorm(config.num_tokens * dim)
        self.register_buffer("codebook", F.normalize(torch.randn(size, dim), dim=-1))
        self.register_buffer("ema_count", torch.zeros(size))
        self.register_buffer("ema_sum", torch.zeros(size, dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def size(self) -> int:
        return self.codebook.shape[0]

    def project(self, h: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
        """Encoder states [B, K, width] -> unit vectors [B, K, d].

        At initialisation the encoder gives almost the same vector for every image, so the
        decoder learns to ignore the tokens and the two stay stuck at a blurred mean image for
        hundreds of steps (docs/experiments.md, "Tokenizer recipe"). Batch-normalising each position's
        projection removes the image-independent part and spreads codes over the sphere from
        the first step. ``batch_stats`` is for training steps only (see CodeNorm).
        """
        p = self.proj(h)
        return F.normalize(self.norm(p.flatten(1), batch_stats).view_as(p), dim=-1)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.codebook.T).argmax(dim=-1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.codebook[codes]

    def forward(self, h: torch.Tensor) -> Quantized:
        z = self.project(h, batch_stats=self.training)
        codes = self.nearest(z.detach())
        q = self.lookup(codes)
        return Quantized(z=z, codes=codes, quantized=z + (q - z).detach(), commitment=F.mse_loss(z, q))

    @torch.no_grad()
    def initialize(self, z: torch.Tensor, iters: int = 10, generator: torch.Generator | None = None) -> None:
        """Spherical k-means on rank 0's batch vectors, broadcast so all processes agree."""
        flat = z.detach().reshape(-1, z.shape[-1]).float()
        pick = torch.randint(0, flat.shape[0], (self.size,), generator=generator).to(flat.device)
        centers = F.normalize(flat[pick] + 0.01 * torch.randn_like(flat[pick]), dim=-1)
        for _ in range(iters):
            assign = (flat @ centers.T).argmax(-1)
            sums = torch.zeros_like(centers).index_add_(0, assign, flat)
            used = torch.bincount(assign, minlength=self.size) > 0
            centers = torch.where(used[:, None], F.normalize(sums, dim=-1), centers)
        self.codebook.copy_(broadcast(centers.contiguous()))
        uniform = float(all_reduce_sum(torch.tensor(float(flat.shape[0]), device=flat.device))) / self.size
        self.ema_count.fill_(uniform)
        self.ema_sum.copy_(self.codebook * uniform)
        self.initialized.fill_(True)

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """One EMA step from this batch's (z, codes), reduced over processes; then reset dead codes.

        Returns how many codes were reset.
        """
        flat, idx = z.detach().reshape(-1, z.shape[-1]).float(), codes.reshape(-1)
        counts = torch.bincount(idx, minlength=self.size).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)
        stats = all_reduce_sum(torch.cat([counts[:, None], sums], dim=1))
        counts, sums = stats[:, 0], stats[:, 1:]
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(F.normalize(self.ema_sum, dim=-1))
        return self._reset_dead(flat, float(counts.sum()), generator)

    def ema_step(self, z: torch.Tensor, codes: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """``update`` after an optimiser step, returning the codebook statistics a training loop logs."""
        resets = self.update(z, codes, generator)
        return {"code_resets": float(resets), "alive_code_fraction": self.alive_fraction()}

    def _reset_dead(self, flat: torch.Tensor, batch_total: float, generator: torch.Generator | None) -> int:
        uniform = batch_total / self.size
        dead = self.ema_count < self.dead_threshold * uniform
        n = int(dead.sum())
        if n == 0:
            return 0
        pick = torch.randint(0, flat.shape[0], (n,), generator=generator).to(flat.device)
        fresh = F.normalize(flat[pick] + 0.01 * torch.randn(n, flat.shape[1], generator=generator).to(flat.device), dim=-1)
        fresh = broadcast(fresh.contiguous())
        self.codebook[dead] = fresh
        self.ema_sum[dead] = fresh * uniform  # a full uniform share: ~160 steps of grace at decay 0.99
        self.ema_count[dead] = uniform
        return n

    def alive_fraction(self) -> float:
        """Share of codes whose EMA usage is above the dead threshold."""
        uniform = self.ema_count.sum() / self.size
        return float((self.ema_count >= self.dead_threshold * uniform).float().mean())


def code_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, object]:
    """Usage over a set of codes [N, K]: active fraction and per-position perplexity."""
    active = torch.unique(codes).numel() / codebook_size
    perplexity = []
    for k in range(codes.shape[1]):
        p = torch.bincount(codes[:, k], minlength=codebook_size).float()
        p = p / p.sum()
        perplexity.append(float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum())))
    return {"active_code_fraction": active, "perplexity_per_position": perplexity}
