"""Encoder: input patches plus K learnable queries -> K continuous vectors (no spatial layout).

Patches are embedded by a linear map of their pixels (ViT), a small strided conv stem, or both.
The linear stem sees colour at once but not outline: trained *supervised* on which shapes a
scene holds, the size-T encoder with it is barely above the majority baseline after 600 steps
(72% vs 70%) while colours are perfect after 150. With the conv stem the patch stream holds
shape (96%) by step 600, and the K queries read it out only later (75% at 600, 99.98% at
1500 steps; docs/tokenizer_ablation.md).

Patches attend only to patches and queries attend to [patches, queries] (one-way), so the
patch features are a plain ViT of the image and the queries read from it. Each query position
has its own AdaLN modulation from an embedding of its index, letting position 1 and position
K specialise (coarse vs fine) with shared block weights.
"""

from __future__ import annotations

import itertools

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from torch import nn

from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.layers import Stream, attention, init_weights, patchify


class LinearStem(nn.Linear):
    """[B, C, S, S] -> [B, (S/p)^2, width]: one linear map of each p x p patch (ViT). A Linear
    itself, so weights saved before stems existed (``encoder.embed.weight``) still load."""

    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__(channels * patch * patch, width)
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(patchify(x, self.patch))


class ConvStem(nn.Module):
    """[B, C, S, S] -> [B, (S/p)^2, width]: two 3x3 convs per resolution, halving it log2(p)
    times (the "early convolutions" stem), so outline features exist before attention mixes.

    The output is layer-normalised: without it the stem's features came out at 1/8 the scale of
    the position embedding they are added to, the encoder read mostly position, and the trained
    tokenizer lost colours and 3 dB (docs/tokenizer_ablation.md)."""

    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__()
        halvings = patch.bit_length() - 1
        if patch != 1 << halvings:
            raise ValueError(f"the conv stem needs a power-of-two encoder_patch, got {patch}")
        widths = [max(width >> (halvings - i), 32) for i in range(halvings + 1)]
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.GELU()]
        layers += [nn.Conv2d(widths[0], widths[0], 3, padding=1), nn.GELU()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(b, b, 3, padding=1), nn.GELU()]
        layers.append(nn.Conv2d(widths[-1], width, 1))
        self.net = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(x).flatten(2).transpose(1, 2))


class HybridStem(nn.Module):
    """The linear stem plus the conv stem behind a per-channel gate that starts at zero: it
    starts as the linear stem (pixel values reach the tokens through a linear path, which is how
    colours come for free) and mixes in outline features as training finds them useful. A gate
    opened from the start (1.0) trained worse, not better (docs/tokenizer_ablation.md)."""

    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__()
        self.linear = LinearStem(channels, width, patch)
        self.conv = ConvStem(channels, width, patch)
        self.gate = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.gate * self.conv(x)


STEMS = {"linear": LinearStem, "conv": ConvStem, "hybrid": HybridStem}


class Encoder(nn.Module):
    def __init__(self, channels: int, size: int, config: TokenizerConfig) -> None:
        super().__init__()
        p, width, k = config.encoder_patch, config.encoder_width, config.num_tokens
        if size % p:
            raise ValueError(f"input size {size} is not divisible by encoder_patch {p}")
        grid = size // p
        self.num_patches = grid * grid
        self.embed = STEMS[config.encoder_stem](channels, width, p)
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
        after the last block, before the final norm (scripts/encoder_probe.py reads both)."""
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
