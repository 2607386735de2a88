"""SpatialTokenizer: the 2D VQ control arm, with the public API of SelftokTokenizer.

The image is cut into a rows x cols grid of K rectangular cells; a ViT gives one vector per
cell, the Selftok quantiser (same codebook size and code dim, so the same bits per image)
turns each into a code, and a transformer maps the K codes back to each cell's pixels. Codes
are in raster order (row-major): codes[:, 0] is the top-left cell. This is the spatial-token
model the paper contrasts with Selftok for RL (docs/method.md); everything else in the
comparison (K, codebook, prefix dropout, training loop) is kept equal.

There is no diffusion decoder: ``decode`` and ``render`` are the same deterministic pass. A
prefix k shows the first k codes in raster order and replaces the rest by a learned mask
vector (trained with random prefix cuts, as Selftok's nested dropout), so prefix curves of the
two tokenizers compare like with like.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from safetensors.torch import load_file, save_file
from torch import nn

from selftok.data.dataset import to_uint8, to_unit
from selftok.tokenizer.arch import JsonConfig, TokenizerConfig
from selftok.tokenizer.layers import FinalLayer, Stream, attention, init_weights
from selftok.tokenizer.loss import pixel_loss
from selftok.tokenizer.quantizer import Quantizer
from selftok.tokenizer.spatial_params import SPATIAL_SIZES

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
FORMAT = "selftok-spatial/1"
MODEL_TYPE = "selftok-spatial"  # what selftok.mlflow_model and registry.load_tokenizer dispatch on
CHANNELS = 3  # pixel space only

@dataclass(frozen=True)
class Grid:
    """K cells of cell_h x cell_w pixels in rows x cols, numbered row-major."""

    rows: int
    cols: int
    cell_h: int
    cell_w: int

    @property
    def cell_features(self) -> int:
        return CHANNELS * self.cell_h * self.cell_w


def cell_grid(num_tokens: int, image_size: int) -> Grid:
    """The squarest rows x cols = K grid whose cells tile an image_size x image_size image.

    rows <= cols without loss of generality (the image is square): K=32 at 32 px gives 4 x 8
    cells of 8 x 4 px.
    """
    for rows in range(math.isqrt(num_tokens), 0, -1):
        cols = num_tokens // rows
        if rows * cols == num_tokens and image_size % rows == 0 and image_size % cols == 0:
            return Grid(rows, cols, image_size // rows, image_size // cols)
    raise ValueError(
        f"num_tokens={num_tokens} does not tile a {image_size}x{image_size} image: a spatial tokenizer needs "
        f"rows x cols = {num_tokens} with both rows and cols dividing {image_size}"
    )


def to_cells(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """[B, C, H, W] -> [B, K, C * cell_h * cell_w], cells in raster order."""
    b, c, h, w = x.shape
    if (h, w) != (grid.rows * grid.cell_h, grid.cols * grid.cell_w):
        raise ValueError(f"images are {h}x{w}, the tokenizer expects {grid.rows * grid.cell_h}x{grid.cols * grid.cell_w}")
    x = x.reshape(b, c, grid.rows, grid.cell_h, grid.cols, grid.cell_w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, grid.rows * grid.cols, c * grid.cell_h * grid.cell_w)


def from_cells(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Inverse of ``to_cells``."""
    b = x.shape[0]
    x = x.reshape(b, grid.rows, grid.cols, CHANNELS, grid.cell_h, grid.cell_w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, CHANNELS, grid.rows * grid.cell_h, grid.cols * grid.cell_w)


@dataclass(frozen=True)
class SpatialConfig(JsonConfig):
    """Everything needed to rebuild the networks (saved as config.json); training knobs live in params."""

    label = "spatial tokenizer"

    image_size: int = 32
    num_tokens: int = 32
    codebook_size: int = 1024
    code_dim: int = 16
    encoder_width: int = 96  # defaults: size "T"
    encoder_depth: int = 4
    decoder_width: int = 128
    decoder_depth: int = 5
    heads: int = 4
    mlp_ratio: float = 4.0
    ema_decay: float = 0.99
    dead_threshold: float = 0.2

    def __post_init__(self) -> None:
        cell_grid(self.num_tokens, self.image_size)  # a K that does not tile the image fails here, by name

    @classmethod
    def from_size(cls, size: str, **overrides: Any) -> SpatialConfig:
        if size not in SPATIAL_SIZES:
            raise KeyError(f"unknown spatial tokenizer size {size!r}; known: {', '.join(SPATIAL_SIZES)}")
        return cls(**{**SPATIAL_SIZES[size], **overrides})

    @property
    def grid(self) -> Grid:
        return cell_grid(self.num_tokens, self.image_size)

    def quantizer_config(self) -> TokenizerConfig:
        """The shared Quantizer (code normalisation included, as for Selftok) reads only these fields."""
        return TokenizerConfig(
            num_tokens=self.num_tokens, codebook_size=self.codebook_size, code_dim=self.code_dim,
            ema_decay=self.ema_decay, dead_threshold=self.dead_threshold,
        )



def _pos_embed(width: int, grid: Grid) -> torch.Tensor:
    """Fixed 2D sin-cos embedding [1, K, width] in raster order, in units of the row spacing.

    Column coordinates are scaled by rows/cols, so positions follow the cells' true geometry
    on the square image (tall cells: columns sit closer together).
    """
    return get_2d_sincos_pos_embed(width, (grid.rows, grid.cols), base_size=grid.rows)[None].float()


def _blocks(width: int, depth: int, config: SpatialConfig) -> nn.ModuleList:
    return nn.ModuleList(Stream(width, config.heads, config.mlp_ratio) for _ in range(depth))


def _run(blocks: nn.ModuleList, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Full (unmasked) self-attention blocks: every cell sees every other cell."""
    for block in blocks:
        q, k, v, mods = block.pre(h, cond)
        h = block.post(h, attention(q, k, v, None), mods)
    return h


class CellEncoder(nn.Module):
    """ViT whose patches are the grid cells: output i is the vector of cell i (no queries)."""

    def __init__(self, config: SpatialConfig, grid: Grid) -> None:
        super().__init__()
        width = config.encoder_width
        self.grid = grid
        self.embed = nn.Linear(grid.cell_features, width)
        self.register_buffer("pos", _pos_embed(width, grid), persistent=False)
        self.cond = nn.Parameter(torch.zeros(1, 1, width))  # one shared AdaLN condition: a plain ViT
        self.blocks = _blocks(width, config.encoder_depth, config)
        self.norm = nn.LayerNorm(width)
        init_weights(self)
        for block in self.blocks:
            block.zero_init(open_gates=True)  # identity blocks would give every image the same codes at init

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [-1, 1] -> [B, K, width]."""
        return self.norm(_run(self.blocks, self.embed(to_cells(images, self.grid)) + self.pos, self.cond))


class CellDecoder(nn.Module):
    """Transformer over the K quantised vectors (hidden ones replaced by a learned mask vector) -> pixels per cell."""

    def __init__(self, config: SpatialConfig, grid: Grid) -> None:
        super().__init__()
        width = config.decoder_width
        self.grid = grid
        self.token_in = nn.Linear(config.code_dim, width)
        self.mask_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.register_buffer("pos", _pos_embed(width, grid), persistent=False)
        self.cell_cond = nn.Parameter(torch.randn(1, config.num_tokens, width) * 0.02)  # per-cell AdaLN condition
        self.blocks = _blocks(width, config.decoder_depth, config)
        self.final = FinalLayer(width, grid.cell_features)
        init_weights(self)
        for block in self.blocks:
            block.zero_init(open_gates=True)
        self.final.zero_init()

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """tokens [B, K, code_dim], visible bool [B, K] -> images [B, 3, S, S] (unclamped)."""
        h = torch.where(visible[..., None], self.token_in(tokens), self.mask_token) + self.pos
        h = _run(self.blocks, h, self.cell_cond)
        return from_cells(self.final(h, self.cell_cond), self.grid)


@dataclass
class SpatialStep:
    """What one training forward returns (a dataclass so DDP sees a plain forward)."""

    loss: torch.Tensor  # [B] pixel MSE per sample (edge-weighted when edge_weight > 0)
    commitment: torch.Tensor
    z: torch.Tensor
    codes: torch.Tensor


class SpatialTokenizer(nn.Module):
    def __init__(self, config: SpatialConfig) -> None:
        super().__init__()
        self.config = config
        self.grid = config.grid
        self.encoder = CellEncoder(config, self.grid)
        self.quantizer = Quantizer(config.encoder_width, config.quantizer_config())
        self.decoder = CellDecoder(config, self.grid)

    @property
    def renderer(self) -> CellDecoder:
        """The deterministic decoder is also the renderer (never None, unlike SelftokTokenizer's)."""
        return self.decoder

    # --- training ------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, limit: torch.Tensor, edge_weight: float = 0.0) -> SpatialStep:
        """Encode, quantise, decode with codes [limit:] masked; (edge-weighted) pixel MSE per sample."""
        quant = self.quantizer(self.encoder(images))
        visible = torch.arange(self.config.num_tokens, device=images.device)[None] < limit[:, None]
        loss = pixel_loss(self.decoder(quant.quantized, visible) - images, images, edge_weight)
        return SpatialStep(loss=loss, commitment=quant.commitment, z=quant.z, codes=quant.codes)

    # --- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """float images [-1, 1] [B, 3, H, W] -> LongTensor [B, K], raster order (top-left first)."""
        return self.quantizer.nearest(self.quantizer.project(self.encoder(images)))

    def tokens(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.lookup(codes)

    def _visible(self, codes: torch.Tensor, prefix: int | None) -> torch.Tensor:
        k = self.config.num_tokens
        if prefix is not None and not 0 <= prefix <= k:
            raise ValueError(f"prefix must be in 0..{k}, got {prefix}")
        limit = k if prefix is None else prefix
        return (torch.arange(k, device=codes.device) < limit)[None].expand(codes.shape[0], -1)

    @torch.no_grad()
    def render(self, codes: torch.Tensor, prefix: int | None = None) -> torch.Tensor:
        """Codes [B, K] -> images [-1, 1]; ``prefix`` keeps the first codes in raster order, masks the rest."""
        return self.decoder(self.tokens(codes), self._visible(codes, prefix)).clamp(-1, 1)

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, steps: int = 20, prefix: int | None = None, seed: int = 0, guidance: float = 1.0
    ) -> torch.Tensor:
        """Same as ``render``: ``steps``, ``seed`` and ``guidance`` exist for API parity and are unused
        (there is no diffusion decoder and no unconditional branch)."""
        return self.render(codes, prefix=prefix)

    # --- persistence ---------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT, "kind": "spatial"})
        extra = {"format": FORMAT, "kind": "spatial", "model_type": MODEL_TYPE}
        (folder / CONFIG_FILE).write_text(json.dumps({**self.config.to_dict(), **extra}, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> SpatialTokenizer:
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer config here")
        data: dict[str, Any] = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} folder (format {data.get('format')!r})")
        model = cls(SpatialConfig.from_dict({k: v for k, v in data.items() if k not in ("format", "kind", "model_type")}))
        model.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
        return model.eval()

    def predict(self, model_input: Any, mode: str = "encode", steps: int = 20) -> Any:
        """MLflow pyfunc entry: uint8 images [N, 3, H, W] -> codes, or codes -> uint8 images (render/decode).

        ``steps`` is accepted so callers can pass SelftokTokenizer.predict's params; it is unused here.
        """
        x = torch.as_tensor(numpy.asarray(model_input))
        if mode == "encode":
            return self.encode(to_unit(x)).numpy()
        if mode in ("render", "decode"):
            return to_uint8(self.render(x.long())).numpy()
        raise ValueError(f"mode must be encode, render or decode, got {mode!r}")
