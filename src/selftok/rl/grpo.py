"""Group-normalised policy gradient over visual tokens (GRPO, as in Selftok-Zero).

For each prompt a group of G images is sampled and rewarded; a sample's advantage is its
reward standardised within its group, shared by every visual token of that sample. Each batch
makes a single update, so the PPO ratio is exactly 1 in value and its clipping never acts; the
loss is the plain policy gradient

    - mean_i mean_k [ r_ik A_i ] + beta * mean_i mean_k KL_ik,   r_ik = exp(log pi - sg(log pi))

with KL_ik the k3 estimate of KL(pi || ref) on the sampled token against a frozen reference,
exp(ref - logp) - (ref - logp) - 1 (non-negative, unbiased when tokens are drawn from pi). The
exact KL over the whole visual vocabulary is logged beside it: it sees probability moved onto
codes the guided sampler never draws, which k3 cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Rewards [N] laid out prompt-major (G consecutive samples per prompt) -> advantages [N].

    A group whose rewards are all equal carries no signal and gets zero advantage.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True, correction=0) if group_size > 1 else torch.zeros_like(mean)
    return ((groups - mean) / (std + eps)).flatten()


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || ref) from log-probs of the sampled tokens."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1


def exact_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Per-position KL(pi || ref) summed over the vocabulary: logits [..., V] -> [...]."""
    logp, ref_logp = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each position's distribution: logits [..., V] -> [...]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor
    policy: torch.Tensor
    kl: torch.Tensor


def grpo_loss(
    logp: torch.Tensor,
    kl: torch.Tensor | None,
    advantages: torch.Tensor,
    beta: float,
    mask: torch.Tensor | None = None,
) -> LossParts:
    """logp [N, K] of the sampled visual tokens (with gradient); kl [N, K] per token (None: no
    penalty); advantages [N]."""
    mask = torch.ones_like(logp) if mask is None else mask.to(logp.dtype)
    ratio = torch.exp(logp - logp.detach())  # 1, with the gradient of log pi
    per_token = -ratio * advantages.detach().unsqueeze(1)
    kl = torch.zeros_like(logp) if kl is None or beta == 0 else kl
    per_sample = ((per_token + beta * kl) * mask).sum(1) / mask.sum(1).clamp_min(1)
    denominator = mask.sum().clamp_min(1)
    return LossParts(
        loss=per_sample.mean(),
        policy=((per_token * mask).sum() / denominator).detach(),
        kl=((kl * mask).sum() / denominator).detach(),
    )
