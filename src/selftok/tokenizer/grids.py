"""Image grids to look at: originals against diffusion, renderer and prefix reconstructions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from selftok.data.dataset import to_uint8, to_unit
from selftok.tokenizer.metrics import prefix_lengths
from selftok.tokenizer.registry import AnyTokenizer


def image_grid(rows: list[torch.Tensor], scale: int = 4, pad: int = 2) -> Image.Image:
    """Rows of float images [B, 3, H, W] in [-1, 1] -> one PIL image, upscaled (nearest) by ``scale``."""
    cells = []
    for row in rows:
        big = F.interpolate(row.float().cpu(), scale_factor=scale, mode="nearest")
        big = F.pad(big, (pad, pad, pad, pad), value=1.0)
        cells.append(torch.cat(list(big), dim=2))  # [3, h, B*w]
    width = max(c.shape[2] for c in cells)
    grid = torch.cat([F.pad(c, (0, width - c.shape[2]), value=1.0) for c in cells], dim=1)
    return Image.fromarray(to_uint8(grid).permute(1, 2, 0).numpy())


@torch.no_grad()
def reconstruction_grid(model: AnyTokenizer, images: torch.Tensor, steps: int, seed: int = 0) -> Image.Image:
    """Rows: original, diffusion decode, renderer (if any), then diffusion decodes of prefixes 1, 2, 4, ...

    A spatial tokenizer's decode is its renderer, so its rows are its full and prefix renders."""
    model.eval()
    device = next(model.parameters()).device
    x = to_unit(images).to(device)
    codes = model.encode(x)
    rows = [x, model.decode(codes, steps=steps, seed=seed)]
    if model.renderer is not None:
        rows.append(model.render(codes))
    rows += [model.decode(codes, steps=steps, prefix=n, seed=seed) for n in prefix_lengths(model.config.num_tokens)[:-1]]
    return image_grid(rows)
