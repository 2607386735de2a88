"""params.yaml sections `vae`, `tokenizer` and `renderer` (strict: unknown keys and impossible values fail early)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from selftok.schema import LRDecay, StrictModel
from selftok.tokenizer.arch import SIZES, CodeNormKind, EncoderStem, InputSpace, Objective, ScheduleKind, TokenizerConfig

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[int, Field(ge=1)]
EdgeWeight = Annotated[float, Field(ge=0.0)]  # extra loss weight near target edges (selftok.tokenizer.loss)


class TokenizerEval(StrictModel):
    val_images: Positive = 128
    decode_steps: Positive = 20  # Euler steps of the diffusion decode (paper: 50)
    prefix_steps: Positive = 10  # Euler steps for each prefix of the prefix curve
    grid_images: Positive = 8


class SizeOverrides(StrictModel):
    """Widths and depths that override a size preset, shared by the Selftok and spatial tokenizers."""

    encoder_width: Positive | None = None  # None: the size preset's value
    encoder_depth: Positive | None = None
    decoder_width: Positive | None = None
    decoder_depth: Positive | None = None
    heads: Positive | None = None

    def overrides(self) -> dict[str, int]:
        """The fields set here, to apply over the size preset."""
        return {k: v for k in SizeOverrides.model_fields if (v := getattr(self, k)) is not None}


class LoopParams(StrictModel):
    """The knobs of the shared training loop (selftok.tokenizer.train.LoopConfig), by name."""

    steps: Positive = 2000
    batch_size: Positive = 64
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    lr_decay: LRDecay = "cosine"
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0.0)
    checkpoint_every: Positive = 200
    log_every: Positive = 25
    eval_every: Positive = 500


class TokenizerParams(SizeOverrides, LoopParams):
    """Architecture (size preset + overrides) and the joint encoder/decoder training recipe
    (``lr`` drives the encoder, quantiser projection and token stream)."""

    size: Literal[tuple(SIZES)] = "T"  # type: ignore[valid-type]
    num_tokens: Positive = 32
    codebook_size: int = Field(1024, ge=2)
    code_dim: int = Field(16, ge=2)
    encoder_patch: Positive = 4
    decoder_patch: Positive = 4
    encoder_stem: EncoderStem = "linear"  # patch embedding (selftok.tokenizer.encoder)
    input_space: InputSpace = "pixels"
    vae_path: str | None = None
    schedule: ScheduleKind = "custom"
    objective: Objective = "velocity"
    ema_decay: float = Field(0.99, gt=0.0, lt=1.0)
    dead_threshold: float = Field(0.2, ge=0.0, lt=1.0)
    code_norm: CodeNormKind = "batch"  # see selftok.tokenizer.quantizer.Quantizer.project
    cache_latents: bool = True  # vae space: encode the train set once (float32 in RAM) instead of every step

    image_lr_scale: float = Field(1.0, gt=0.0, le=1.0)  # image stream lr = lr * this (paper ~0.2)
    pure_noise_fraction: Fraction = 0.25  # samples at t=1: autoencoding through the decoder
    edge_weight: EdgeWeight = 0.0
    pixel_weight: float = Field(0.0, ge=0.0)  # pixel loss on the t=1 samples' one-step decode (selftok.tokenizer.model)
    pixel_edge_weight: EdgeWeight = 4.0  # its edge weighting, as the renderer's
    prefix_dropout: Fraction = 0.2  # nested prefix cut (our extension)
    no_token_fraction: Fraction = 0.1  # unconditional samples (enables CFG)
    commitment_weight: float = Field(1.0, ge=0.0)
    entropy_weight: float = Field(0.0, ge=0.0)
    eval: TokenizerEval = TokenizerEval()

    @model_validator(mode="after")
    def _check(self) -> TokenizerParams:
        if self.prefix_dropout + self.no_token_fraction > 1:
            raise ValueError("prefix_dropout + no_token_fraction must be <= 1")
        if self.input_space == "vae" and not self.vae_path:
            raise ValueError("input_space 'vae' needs vae_path (a local diffusers AutoencoderKL folder)")
        return self

    def architecture(self, image_size: int, root: Path | None = None) -> TokenizerConfig:
        """The networks' config; a relative ``vae_path`` is read from ``root`` (the project) when given."""
        vae_path = self.vae_path if self.input_space == "vae" else None
        if vae_path is not None and root is not None:
            vae_path = str(root / vae_path)  # an absolute vae_path stays as it is
        return TokenizerConfig.from_size(
            self.size,
            image_size=image_size,
            input_space=self.input_space,
            vae_path=vae_path,
            num_tokens=self.num_tokens,
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            encoder_patch=self.encoder_patch,
            decoder_patch=self.decoder_patch,
            encoder_stem=self.encoder_stem,
            schedule=self.schedule,
            objective=self.objective,
            ema_decay=self.ema_decay,
            dead_threshold=self.dead_threshold,
            code_norm=self.code_norm,
            **self.overrides(),
        )


class RendererParams(LoopParams):
    """One-step renderer trained on the frozen tokenizer's codes with pixel MSE."""

    steps: Positive = 600
    lr: float = Field(5e-4, gt=0.0, le=1.0)
    warmup_steps: int = Field(50, ge=0)
    eval_every: Positive = 300
    init_from_decoder: bool = True  # start from the diffusion decoder at t=1 (converges much faster)
    prefix_dropout: Fraction = 0.0  # nested prefix cut so that prefixes render too
    edge_weight: EdgeWeight = 0.0


class VaeParams(LoopParams):
    """params.yaml section ``vae``: the autoencoder's shape and its training recipe."""

    steps: Positive = 1500
    warmup_steps: int = Field(50, ge=0)
    checkpoint_every: Positive = 250
    block_out_channels: tuple[Positive, ...] = Field((16, 32, 64), min_length=1)  # one halving per step: 32x32 -> 8x8
    layers_per_block: Positive = 1
    latent_channels: Positive = 8
    norm_num_groups: Positive = 16
    kl_weight: float = Field(1e-6, ge=0.0)  # small: the latent stays close to deterministic
    scaling_images: Positive = 2048  # train images the latent shift and scale are measured on
    val_images: Positive = 128  # val images its PSNR / SSIM are measured on
    grid_images: Positive = 8  # images in the reconstruction grids logged to MLflow

    @model_validator(mode="after")
    def _check(self) -> VaeParams:
        bad = [w for w in self.block_out_channels if w % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not divisible by norm_num_groups {self.norm_num_groups}")
        return self

    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)
