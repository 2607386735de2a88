"""One-step renderer: the decoder's architecture with learnable canvas tokens instead of x_t.

Trained on frozen tokens with pixel MSE, it maps codes to an image in one deterministic pass
(~tens of times cheaper than the Euler decode, and in the paper more accurate).
"""

from __future__ import annotations

import torch
from torch import nn

from selftok.tokenizer.arch import Objective, TokenizerConfig
from selftok.tokenizer.decoder import MMDiT

RENDER_TIME = 1.0  # the renderer runs at the pure-noise end, where every token is visible


class Renderer(nn.Module):
    def __init__(self, channels: int, size: int, config: TokenizerConfig) -> None:
        super().__init__()
        self.net = MMDiT(channels, size, config, canvas=True)

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Quantised vectors [B, K, d] -> x0 estimate in input space [B, C, S, S]."""
        b, k = tokens.shape[:2]
        if visible is None:
            visible = torch.ones(b, k, dtype=torch.bool, device=tokens.device)
        t = torch.full((b,), RENDER_TIME, device=tokens.device)
        return self.net(None, t, tokens, visible)

    @torch.no_grad()
    def init_from_decoder(self, decoder: MMDiT, objective: Objective) -> None:
        """Start from the diffusion decoder at t=1 with a zero input as the canvas.

        At t=1 the decoder already maps tokens to an x0 estimate (x0 = x_t - v): with x_t = 0
        that is -v for the velocity objective, so the output layer is negated there.
        """
        state = {k: v for k, v in decoder.state_dict().items() if not k.startswith("embed.")}
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or set(missing) != {"canvas"}:
            raise RuntimeError(f"decoder and renderer do not match: missing {missing}, unexpected {unexpected}")
        self.net.canvas.copy_(decoder.embed.bias.expand_as(self.net.canvas))
        if objective == "velocity":
            self.net.final.linear.weight.neg_()
            self.net.final.linear.bias.neg_()
