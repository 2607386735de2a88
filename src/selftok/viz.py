"""Image grids for MLflow, reports and the CLI."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor | np.ndarray, columns: int = 8, pad: int = 1, scale: int = 1) -> Image.Image:
    """uint8 images [N, 3, H, W] -> one PIL grid, row-major, with a dark gutter."""
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.shape[1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image_grid wants uint8 [N, 3, H, W], got {array.dtype} {list(array.shape)}")
    n, _, h, w = array.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 16, dtype=np.uint8)
    for i, image in enumerate(array):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = image.transpose(1, 2, 0)
    out = Image.fromarray(grid)
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST) if scale > 1 else out
