"""The token schedule: which tokens the decoder sees at each point of the flow path.

THE convention of this package (tested in tests/tokenizer/test_schedule.py):

- Tokens are numbered coarse to fine. Token 1 of the paper (the coarsest) is index 0 in code;
  ``codes[:, 0]`` is v1 and ``codes[:, K-1]`` is vK.
- Flow time t runs over [0, 1] with t = 1 pure noise and t = 0 the clean input:
  ``x_t = t * eps + (1 - t) * x0`` and the velocity target is ``v = eps - x0``.
- ``first_visible(t, K) = k`` (0-based) means tokens k..K-1 (v_{k+1}..v_K) are visible.
  k = 0 at t = 1 (all visible) and k = K at t = 0 (none visible); k never decreases as t falls.

Why: a token hidden at time t cannot change what the decoder does from t on, so the first token
(hidden first, right after pure noise) can only carry what the start of denoising decides
(layout, colour) and the last only the finest detail. That makes the sequence causal.
"""

from __future__ import annotations

import torch

from selftok.tokenizer.arch import ScheduleKind

# The paper's K=512 allocation: tokens hidden over each fifth of the path, noisiest fifth first.
PAPER_ALLOCATION: tuple[int, ...] = (16, 48, 72, 184, 192)


def allocation(num_tokens: int, kind: ScheduleKind = "custom") -> list[int]:
    """Tokens hidden over each of the 5 equal time bands (noisiest first); sums to K exactly.

    The paper's proportions are scaled by largest remainder, ties to the noisier band.
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    bands = len(PAPER_ALLOCATION)
    if kind == "uniform":
        shares = [num_tokens / bands] * bands
    elif kind == "custom":
        total = sum(PAPER_ALLOCATION)
        shares = [num_tokens * a / total for a in PAPER_ALLOCATION]
    else:
        raise ValueError(f"unknown schedule {kind!r}; expected 'custom' or 'uniform'")
    counts = [int(s) for s in shares]
    order = sorted(range(bands), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: num_tokens - sum(counts)]:
        counts[i] += 1
    return counts


def first_visible(t: torch.Tensor, num_tokens: int, kind: ScheduleKind = "custom") -> torch.Tensor:
    """k(t) as a LongTensor shaped like t: the 0-based index of the first visible token.

    Piecewise linear in the number of hidden tokens over 5 equal bands of 1 - t, floored, so
    k(1) = 0 and k(0) = K.
    """
    if kind == "uniform":
        hidden = (1.0 - t.double()) * num_tokens
    else:
        counts = allocation(num_tokens, kind)
        knots = torch.linspace(0.0, 1.0, len(counts) + 1, dtype=torch.float64, device=t.device)
        cum = torch.tensor([0, *counts], dtype=torch.float64, device=t.device).cumsum(0)
        s = (1.0 - t.double()).clamp(0.0, 1.0)
        band = torch.bucketize(s, knots[1:-1], right=True)  # 0..4
        frac = (s - knots[band]) / (knots[band + 1] - knots[band])
        hidden = cum[band] + frac * (cum[band + 1] - cum[band])
    # 1e-9 absorbs float error so that band edges land on whole tokens.
    return torch.floor(hidden + 1e-9).long().clamp(0, num_tokens)


def visible_mask(first: torch.Tensor, limit: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bool [B, K]: token i visible iff first <= i < limit (limit < K is a prefix cut)."""
    index = torch.arange(num_tokens, device=first.device)
    return (index >= first[:, None]) & (index < limit[:, None])


def sample_limits(
    batch: int,
    num_tokens: int,
    prefix_fraction: float,
    no_token_fraction: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-sample end of the visible range for training: K normally, a random cut otherwise.

    A ``no_token_fraction`` of samples see no tokens (limit 0: the unconditional branch for
    classifier-free guidance); a ``prefix_fraction`` of samples see at most a random prefix
    v1..v_L with L uniform in 1..K (nested dropout, our extension: makes prefixes decodable).
    """
    u = torch.rand(batch, generator=generator)
    cut = torch.randint(1, num_tokens + 1, (batch,), generator=generator)
    limit = torch.full((batch,), num_tokens, dtype=torch.long)
    limit = torch.where(u < prefix_fraction + no_token_fraction, cut, limit)
    return torch.where(u < no_token_fraction, torch.zeros_like(limit), limit)
