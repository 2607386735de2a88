"""Encoder: input patches plus K learnable queries -> K continuous vectors (no spatial layout).

Patches of the latent grid are embedded by a linear map (ViT): the VAE's conv encoder has already
turned local outline into latent features, so the patches need no conv stem of their own.

Patches attend only to patches and queries attend to [patches, queries] (one-way), so the
patch features are a plain ViT of the image and the queries read from it. Each query position
has its own AdaLN modulation from an embedding of its index, letting position 1 and position
K specialise (coarse vs fine) with shared block weights.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from torch import nn

from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.layers import Stream, attention, init_weights, patchify


class LinearStem(nn.Linear):
    """[B, C, S, S] -> [B, (S/p)^2, width]: one linear map of each p x p patch (ViT). A Linear
    itself, so its weights are ``encoder.embed.weight`` / ``.bias``."""

    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__(channels * patch * patch, width)
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(patchify(x, self.patch))


class Encoder(nn.Module):
    def __init__(self, channels: int, size: int, config: TokenizerConfig) -> None:
        super().__init__()
        p, width, k = config.encoder_patch, config.encoder_width, config.num_tokens
        if size % p:
            raise ValueError(f"input size {size} is not divisible by encoder_patch {p}")
        grid = size // p
        self.num_patches = grid * grid
        self.embed = LinearStem(channels, width, p)
        self.register_buffer("pos", get_2d_sincos_pos_embed(width, grid, base_size=grid)[None].float(), persistent=False)
        # Unit-scale queries and index embeddings: at 0.02 every query read the same average of
        # the patches and all K outputs collapsed onto one vector (cosine 0.999 between positions).
        self.queries = nn.Parameter(torch.randn(1, k, width))
        self.query_index = nn.Parameter(torch.randn(k, width))  # per-position AdaLN condition
        self.patch_cond = nn.Parameter(torch.zeros(1, width))  # one shared condition for all patches
        self.blocks = nn.ModuleList(Stream(width, config.heads, config.mlp_ratio) for _ in range(config.encoder_depth))
        self.norm = nn.LayerNorm(width)
        n = self.num_patches
        mask = torch.ones(n + k, n + k, dtype=torch.bool)
        mask[:n, n:] = False  # patches never read the queries
        self.register_buffer("mask", mask, persistent=False)
        init_weights(self)
        for block in self.blocks:
            block.zero_init(open_gates=True)  # identity blocks would give every image the same codes at init

    def streams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, C, S, S] -> the patch stream [B, (S/p)^2, width] and the query stream [B, K, width]
        after the last block, before the final norm."""
        b = x.shape[0]
        h = torch.cat([self.embed(x) + self.pos, self.queries.expand(b, -1, -1)], dim=1)
        cond = torch.cat([self.patch_cond.expand(self.num_patches, -1), self.query_index])[None]
        for block in self.blocks:
            q, k, v, mods = block.pre(h, cond)
            h = block.post(h, attention(q, k, v, self.mask), mods)
        return h[:, : self.num_patches], h[:, self.num_patches :]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] in input space -> [B, K, width]."""
        return self.norm(self.streams(x)[1])
