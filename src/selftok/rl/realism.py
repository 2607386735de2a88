"""A per-image realism penalty for the RL reward: how far an image's evaluator features lie from
real renders of RL prompts through the tokenizer.

The realism check of the guard (``rl.max_frechet_ratio``) looks at a whole batch and can only
stop a run. This looks at each image, so the group-normalised advantage itself prefers the
members of a group that stay near the data. The distance is to the k-th nearest real render
(k-NN, so a template far from every real image is far even if the batch's mean and covariance
happen to match), divided by the same distance among the real renders themselves (leave one
out, median): about 1 for an image like the data. On the tenth session's models, benchmark images
of the pretrained model have a median ratio of 1.04, those of the hacked default RL model 1.41
(docs/rl_finetune.md, eleventh session).
"""

from __future__ import annotations

import torch


def kth_neighbour_distance(queries: torch.Tensor, bank: torch.Tensor, k: int, exclude_self: bool = False) -> torch.Tensor:
    """Distance [N] from each query to its k-th nearest row of ``bank`` (the queries' own rows left
    out when they are the bank)."""
    distances = torch.cdist(queries.float(), bank.float(), compute_mode="donot_use_mm_for_euclid_dist")  # exact near 0
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    return distances.topk(k, dim=1, largest=False).values[:, -1]


class RealismPenalty:
    """``coef`` x max(0, ratio - 1) per image, where ratio is its k-NN distance to the real renders'
    features over theirs among themselves."""

    def __init__(self, real_features: torch.Tensor, coef: float, k: int = 5) -> None:
        # renders the tokenizer maps to one image count once: copies would put the k-th neighbour at distance 0
        self.bank, self.coef, self.k = torch.unique(real_features.float(), dim=0), coef, k
        if len(self.bank) <= k:
            raise ValueError(f"the realism penalty needs more than k = {k} distinct real renders, got {len(self.bank)}")
        self.scale = float(kth_neighbour_distance(self.bank, self.bank, k, exclude_self=True).median())
        norm = float(self.bank.norm(dim=1).median())
        if self.scale <= 1e-3 * norm:
            raise ValueError(f"the real renders' evaluator features are all but identical (k-NN distance {self.scale:.2g} against "
                             f"feature norms {norm:.2g}): the tokenizer or the evaluator cannot tell them apart, so the realism "
                             "penalty has no scale (set rl.realism_coef: 0)")

    def ratio(self, features: torch.Tensor) -> torch.Tensor:
        """k-NN distance to the real renders over theirs among themselves: ~1 like the data, more away from it."""
        return kth_neighbour_distance(features, self.bank, self.k) / self.scale

    def penalty(self, ratio: torch.Tensor) -> torch.Tensor:
        """What the reward loses for a ``ratio``: nothing up to the data's own spacing, then linear."""
        return self.coef * (ratio - 1).clamp_min(0)
