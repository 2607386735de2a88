"""MMDiT decoder: an image stream and a token stream with separate weights and joint attention.

The image stream carries patches of x_t (or, in the renderer, learnable canvas tokens) and is
modulated by the flow time; the token stream carries the quantised vectors plus a fixed sin-cos
position embedding and is modulated per position (time + index embedding). Hidden tokens are
zeroed AND removed as attention keys, so nothing about them reaches the image stream; this is
what makes the schedule's causality real and is tested by perturbing hidden tokens.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import (
    TimestepEmbedding,
    Timesteps,
    get_1d_sincos_pos_embed_from_grid,
    get_2d_sincos_pos_embed,
)
from torch import nn

from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.layers import FinalLayer, Stream, attention, init_weights, patchify, unpatchify

TIME_SCALE = 1000.0  # flow time t in [0, 1] is embedded as t * 1000, as diffusers' flow models do


class MMDiT(nn.Module):
    """Predicts, for every patch, the decoder target (velocity or x0) from image and tokens.

    ``canvas=True`` replaces the x_t patch embedding by learnable canvas tokens (the renderer).
    """

    def __init__(self, channels: int, size: int, config: TokenizerConfig, canvas: bool = False) -> None:
        super().__init__()
        p, width, k = config.decoder_patch, config.decoder_width, config.num_tokens
        if size % p:
            raise ValueError(f"input size {size} is not divisible by decoder_patch {p}")
        grid = size // p
        self.patch, self.channels, self.size, self.num_tokens = p, channels, size, k
        self.num_patches = grid * grid
        if canvas:
            self.canvas = nn.Parameter(torch.zeros(1, self.num_patches, width))
        else:
            self.embed = nn.Linear(channels * p * p, width)
        self.register_buffer("pos", get_2d_sincos_pos_embed(width, grid, base_size=grid)[None].float(), persistent=False)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, width)
        self.token_in = nn.Linear(config.code_dim, width)
        self.token_scale = config.code_dim**0.5  # unit code vectors -> unit-variance entries, on par with token_pos
        token_pos = get_1d_sincos_pos_embed_from_grid(width, torch.arange(k, dtype=torch.float64))
        self.register_buffer("token_pos", token_pos[None].float(), persistent=False)
        self.token_index = nn.Parameter(torch.randn(k, width))  # per-position AdaLN condition, on par with time
        depth = config.decoder_depth
        self.image_streams = nn.ModuleList(Stream(width, config.heads, config.mlp_ratio) for _ in range(depth))
        self.token_streams = nn.ModuleList(
            Stream(width, config.heads, config.mlp_ratio, pre_only=i == depth - 1) for i in range(depth)
        )
        self.final = FinalLayer(width, channels * p * p)
        init_weights(self)
        for stream in [*self.image_streams, *self.token_streams]:
            stream.zero_init()
        self.final.zero_init()

    def image_tokens(self, x: torch.Tensor | None, batch: int) -> torch.Tensor:
        if x is None:
            return self.canvas.expand(batch, -1, -1) + self.pos
        return self.embed(patchify(x, self.patch)) + self.pos

    def forward(self, x: torch.Tensor | None, t: torch.Tensor, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """x: [B, C, S, S] (None for canvas), t: [B], tokens: [B, K, d], visible: bool [B, K]."""
        b = tokens.shape[0]
        img = self.image_tokens(x, b)
        time = self.time_embed(self.time_proj(t * TIME_SCALE).to(img.dtype))[:, None]  # [B, 1, W]
        tok = self.token_in(tokens * (self.token_scale * visible[..., None].to(tokens.dtype))) + self.token_pos
        tok_cond = time + self.token_index
        keys = torch.cat([torch.ones(b, self.num_patches, dtype=torch.bool, device=visible.device), visible], dim=1)
        mask = keys[:, None, None, :]  # [B, 1, 1, N + K]: hidden tokens are no keys
        n = self.num_patches
        for image_stream, token_stream in zip(self.image_streams, self.token_streams, strict=True):
            qi, ki, vi, mi = image_stream.pre(img, time)
            qt, kt, vt, mt = token_stream.pre(tok, tok_cond)
            k, v = torch.cat([ki, kt], dim=2), torch.cat([vi, vt], dim=2)
            if qt is None:  # last block: only the image queries matter
                img = image_stream.post(img, attention(qi, k, v, mask), mi)
            else:
                out = attention(torch.cat([qi, qt], dim=2), k, v, mask)
                img = image_stream.post(img, out[:, :n], mi)
                tok = token_stream.post(tok, out[:, n:], mt)
        return unpatchify(self.final(img, time), self.patch, self.channels, self.size)
