"""Transformer pieces shared by the encoder and the MMDiT decoder/renderer.

A ``Stream`` holds one stream's weights for one block (AdaLN, qkv, output projection, MLP);
the blocks compose streams around one joint attention, as MMDiT does. Modulation comes from a
per-token condition, so one code path serves time AdaLN (one vector per sample) and
per-position AdaLN (one vector per token position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def init_weights(module: nn.Module) -> None:
    """Xavier linears, zero biases (DiT); AdaLN and output layers are zeroed by their owners."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Mlp(nn.Sequential):
    def __init__(self, width: int, ratio: float) -> None:
        hidden = int(width * ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


class Stream(nn.Module):
    """One stream of one block. ``pre_only`` streams (last MMDiT block's token stream) only give keys/values."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, pre_only: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.pre_only = heads, pre_only
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        # A pre_only stream makes no queries: nothing reads its outputs, and unused weights would
        # break data-parallel training.
        self.qkv = nn.Linear(width, (2 if pre_only else 3) * width)
        # QK-norm keeps attention logits bounded at the high learning rates used here.
        self.k_norm = nn.RMSNorm(width // heads, eps=1e-6)
        self.ada = nn.Linear(width, (2 if pre_only else 6) * width)
        if not pre_only:
            self.q_norm = nn.RMSNorm(width // heads, eps=1e-6)
            self.proj = nn.Linear(width, width)
            self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(width, mlp_ratio)

    def zero_init(self, open_gates: bool = False) -> None:
        """Zero modulation: the block starts as identity (DiT) or, with open gates, as a plain pre-LN block."""
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)
        if open_gates and not self.pre_only:
            width = self.ada.out_features // 6
            for gate in (2, 5):  # gate1, gate2 of [shift1, scale1, gate1, shift2, scale2, gate2]
                nn.init.ones_(self.ada.bias[gate * width : (gate + 1) * width])

    def pre(
        self, x: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(q, k, v) as [B, H, L, d] (q None when pre_only) plus the modulation ``post`` needs."""
        mods = list(self.ada(F.silu(cond)).chunk(2 if self.pre_only else 6, dim=-1))
        h = modulate(self.norm1(x), mods[0], mods[1])
        b, n, _ = h.shape
        parts = self.qkv(h).view(b, n, -1, self.heads, h.shape[-1] // self.heads).permute(2, 0, 3, 1, 4)
        if self.pre_only:
            return None, self.k_norm(parts[0]), parts[1], []
        return self.q_norm(parts[0]), self.k_norm(parts[1]), parts[2], mods[2:]

    def post(self, x: torch.Tensor, attn: torch.Tensor, mods: list[torch.Tensor]) -> torch.Tensor:
        gate1, shift2, scale2, gate2 = mods
        x = x + gate1 * self.proj(attn)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA with a boolean mask (True = may attend), heads merged back: [B, L, H*d]."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class FinalLayer(nn.Module):
    """AdaLN then a zero-initialised linear to patch pixels (DiT), so training starts from 0."""

    def __init__(self, width: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, out_features)

    def zero_init(self) -> None:
        for layer in (self.ada, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(F.silu(cond)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p]."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(x: torch.Tensor, patch: int, channels: int, size: int) -> torch.Tensor:
    """Inverse of ``patchify`` for square inputs of side ``size``."""
    b, g = x.shape[0], size // patch
    x = x.view(b, g, g, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, size, size)
