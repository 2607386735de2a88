"""params.yaml sections `vae`, `tokenizer` and `renderer` (strict: unknown keys and impossible values fail early).

The tokenizer reads the latents of `train_vae`'s AutoencoderKL (``tokenizer.vae_path``) with a
plain MSE on latents; the renderer's loss is on pixels, through the frozen VAE decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from selftok.paths import VAE
from selftok.schema import EdgeWeight, Fraction, Positive, StrictModel, fill_absent, positive_int
from selftok.tokenizer.arch import SIZES, Objective, ScheduleKind, TokenizerConfig
from selftok.training.params import LoopParams

GRID_IMAGES = 8  # images in a logged reconstruction grid, unless a section sets its own


def with_grid_images(data: Any, val_images: Any) -> Any:
    """A section's raw input with ``grid_images`` filled when absent: 8, at most its val images."""
    if not isinstance(data, dict) or (count := positive_int(val_images)) is None:
        return data
    return fill_absent(data, {"grid_images": min(GRID_IMAGES, count)})


class TokenizerEval(StrictModel):
    """What the stage measures on val images after training."""

    val_images: Positive = Field(128, description="val images scored")
    decode_steps: Positive = Field(20, description="Euler steps of the diffusion decode (paper: 50)")
    prefix_steps: Positive = Field(10, description="Euler steps for each prefix of the prefix curve")
    grid_images: Positive | None = Field(None, description="images in the logged reconstruction grids (absent: 8, at most val_images)")

    @model_validator(mode="before")
    @classmethod
    def _grid(cls, data: Any) -> Any:
        return with_grid_images(data, data.get("val_images", 128) if isinstance(data, dict) else None)


class SizeOverrides(StrictModel):
    """Widths and depths that override a size preset, shared by the Selftok and spatial tokenizers."""

    encoder_width: Positive | None = Field(None, description="absent: the size preset's")
    encoder_depth: Positive | None = Field(None, description="absent: the size preset's")
    decoder_width: Positive | None = Field(None, description="absent: the size preset's")
    decoder_depth: Positive | None = Field(None, description="absent: the size preset's")
    heads: Positive | None = Field(None, description="absent: the size preset's")

    def overrides(self) -> dict[str, int]:
        """The fields set here, to apply over the size preset."""
        return {k: v for k in SizeOverrides.model_fields if (v := getattr(self, k)) is not None}


class TokenizerParams(SizeOverrides, LoopParams):
    """Architecture (size preset + overrides) and the joint encoder/decoder training recipe
    (``lr`` drives every part: encoder, quantiser projection, token and image streams)."""

    size: Literal[tuple(SIZES)] = Field("T", description="T | S | B | L (selftok.tokenizer.arch.SIZES); overrides win")  # type: ignore[valid-type]
    decoder_width: Positive | None = Field(64, description="decoder width (preset T: 128)")
    num_tokens: Positive = Field(64, description="K, tokens per image")
    codebook_size: int = Field(1024, ge=2, description="codes in the codebook")
    code_dim: int = Field(16, ge=2, description="dimension of a code vector")
    encoder_patch: Positive = Field(1, description="patch side on the latent grid (8x8 latents: 64 patches)")
    decoder_patch: Positive | None = Field(None, description="patch side of the decoder on the latent grid (absent: encoder_patch)")
    vae_path: str = Field(VAE, description="the latent space: any LOCAL diffusers AutoencoderKL folder")
    schedule: ScheduleKind = Field("custom", description="custom (paper's 5-band allocation) | uniform")
    objective: Objective = Field("velocity", description="velocity | x0")
    ema_decay: float = Field(0.95, gt=0.0, lt=1.0, description="codebook EMA decay per step (paper 0.99)")
    dead_threshold: float = Field(0.2, ge=0.0, lt=1.0, description="reset codes with EMA usage < this x uniform")
    steps: Positive = Field(2500, description="optimizer steps")
    lr: float = Field(2e-3, gt=0.0, le=1.0, description="peak learning rate")
    pure_noise_fraction: Fraction = Field(0.25, description="samples at t=1 (autoencoding through the decoder)")
    prefix_dropout: Fraction = Field(0.2, description="share of samples decoded from a random prefix of the tokens (our extension)")
    no_token_fraction: Fraction = Field(0.1, description="unconditional samples (CFG)")
    commitment_weight: float = Field(1.0, ge=0.0, description="weight of the commitment loss")
    eval: TokenizerEval = Field(TokenizerEval(), description="val measurements after training")
    allocation: tuple[int, ...] | None = Field(None, description="tokens hidden per time band, noisiest first (absent: the schedule's); must be the schedule's for K")

    @classmethod
    def inherited(cls, data: Any) -> Any:
        """The decoder patches the latent grid like the encoder unless told otherwise."""
        if not isinstance(data, dict):
            return data
        return fill_absent(data, {"decoder_patch": data.get("encoder_patch") or cls.model_fields["encoder_patch"].default})

    @model_validator(mode="after")
    def _check(self) -> TokenizerParams:
        if self.prefix_dropout + self.no_token_fraction > 1:
            raise ValueError("prefix_dropout + no_token_fraction must be <= 1")
        if self.allocation is not None:
            self._check_allocation(self.allocation)
        return self

    def _check_allocation(self, given: tuple[int, ...]) -> None:
        """A stated allocation must be one the schedule can run: K tokens over its bands, as it computes them."""
        from selftok.tokenizer.schedule import allocation  # torch: only when a profile states one

        if sum(given) != self.num_tokens or min(given) < 0:
            raise ValueError(f"tokenizer.allocation {list(given)} sums to {sum(given)}, not tokenizer.num_tokens {self.num_tokens}")
        if list(given) != (wanted := allocation(self.num_tokens, self.schedule)):
            raise ValueError(f"tokenizer.allocation {list(given)} is not the {self.schedule} schedule's {wanted} for K={self.num_tokens}")

    def architecture(self, image_size: int, root: Path | None = None) -> TokenizerConfig:
        """The networks' config; a relative ``vae_path`` is read from ``root`` (the project) when given."""
        vae_path = str(root / self.vae_path) if root is not None else self.vae_path  # an absolute vae_path stays
        return TokenizerConfig.from_size(
            self.size,
            image_size=image_size,
            vae_path=vae_path,
            num_tokens=self.num_tokens,
            codebook_size=self.codebook_size,
            code_dim=self.code_dim,
            encoder_patch=self.encoder_patch,
            decoder_patch=self.decoder_patch,
            schedule=self.schedule,
            objective=self.objective,
            ema_decay=self.ema_decay,
            dead_threshold=self.dead_threshold,
            **self.overrides(),
        )


class RendererParams(LoopParams):
    """One-step renderer trained on the frozen tokenizer's codes with pixel MSE (through the VAE decoder)."""

    EVAL_EVERY: ClassVar[int] = 200

    steps: Positive = Field(400, description="optimizer steps")
    lr: float = Field(5e-4, gt=0.0, le=1.0, description="peak learning rate")
    warmup_steps: int = Field(50, ge=0, description="linear warmup")
    init_from_decoder: bool = Field(True, description="start from the diffusion decoder's one-step estimate at t=1")
    prefix_dropout: Fraction = Field(0.0, description="share of samples rendered from a random prefix of the tokens")
    edge_weight: EdgeWeight = Field(4.0, description="loss weight 1 + this near the image's edges (its loss is on pixels)")


class VaeExpected(StrictModel):
    """The shape a pretrained VAE is expected to have: what a dry run counts and computes from
    when its config cannot be read here, and what the real config is checked against."""

    latent_channels: Positive = Field(description="channels of its latent (SD3: 16)")
    block_out_channels: tuple[Positive, ...] = Field(min_length=1, description="one halving per entry after the first")
    layers_per_block: Positive = Field(description="resnet layers per block")
    norm_num_groups: Positive = Field(description="group norm groups")
    use_quant_conv: bool = Field(description="1x1 convolutions around the latent (SD3: none)")

    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def mismatches(self, config: Any) -> list[str]:
        """``vae.expected.KEY (want) != config (got)`` for each key a real VAE config contradicts."""
        got = {key: getattr(config, key, None) for key in VaeExpected.model_fields}
        got["block_out_channels"] = tuple(got["block_out_channels"] or ())
        return [f"vae.expected.{key} {getattr(self, key)!r} != {got[key]!r} in the VAE's config"
                for key in VaeExpected.model_fields if got[key] is not None and got[key] != getattr(self, key)]


class VaeParams(LoopParams):
    """params.yaml section ``vae``: the autoencoder's shape and its training recipe, or a
    pretrained one that is only loaded and has its latent statistics fitted."""

    CHECKPOINT_EVERY: ClassVar[int] = 250

    pretrained: str | None = Field(None, description="a diffusers AutoencoderKL (hub id or local folder) used as is (absent: train our own)")
    subfolder: str | None = Field(None, description="the VAE's folder inside a pretrained pipeline repo (SD3: vae)")
    expected: VaeExpected | None = Field(None, description="the pretrained VAE's shape when its config cannot be read here")

    block_out_channels: tuple[Positive, ...] = Field(
        (16, 32, 64), min_length=1, description="one halving per entry after the first: 32x32 images -> 8x8 latents"
    )
    layers_per_block: Positive = Field(1, description="resnet layers per block")
    latent_channels: Positive = Field(8, description="channels of the latent the tokenizer reads")
    norm_num_groups: Positive = Field(16, description="group norm groups (divide every width)")
    kl_weight: float = Field(1e-6, ge=0.0, description="per-pixel KL weight: small, so the latent stays near deterministic")
    steps: Positive = Field(1500, description="optimizer steps")
    warmup_steps: int = Field(50, ge=0, description="linear warmup")
    scaling_images: Positive = Field(2048, description="train images the latent shift_factor / scaling_factor are fitted on")
    val_images: Positive = Field(128, description="val images its PSNR / SSIM are measured on")
    grid_images: Positive | None = Field(None, description="images in the logged reconstruction grids (absent: 8, at most val_images)")

    @classmethod
    def inherited(cls, data: Any) -> Any:
        return with_grid_images(data, data.get("val_images", 128) if isinstance(data, dict) else None)

    @model_validator(mode="after")
    def _check(self) -> VaeParams:
        bad = [w for w in self.block_out_channels if w % self.norm_num_groups]
        if bad:
            raise ValueError(f"block_out_channels {bad} are not divisible by norm_num_groups {self.norm_num_groups}")
        return self

    def downsampling(self) -> int | None:
        """Image side / latent side: a pretrained VAE's comes from its (expected) config; None
        when it is known only once the VAE is loaded."""
        if self.pretrained is None:
            return 2 ** (len(self.block_out_channels) - 1)
        return self.expected.downsampling() if self.expected is not None else None

    def latent_channels_known(self) -> int | None:
        """Latent channels, from params or the pretrained VAE's expected config (None: unknown)."""
        if self.pretrained is None:
            return self.latent_channels
        return self.expected.latent_channels if self.expected is not None else None
