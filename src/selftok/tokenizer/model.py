"""SelftokTokenizer: images <-> K discrete coarse-to-fine codes.

``encode`` gives codes [B, K] with codes[:, 0] the coarsest token (v1); ``decode`` runs the
diffusion decoder with the token schedule; ``render`` runs the one-step renderer. Weights are
saved as safetensors next to a JSON config (never pickles). The VAE of a latent space is copied
into the folder (``vae/``, a diffusers folder), so a saved tokenizer loads on its own, from any
working directory and from the MLflow registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selftok.data.dataset import to_uint8, to_unit
from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.decoder import MMDiT
from selftok.tokenizer.encoder import Encoder
from selftok.tokenizer.quantizer import Quantizer
from selftok.tokenizer.renderer import Renderer
from selftok.tokenizer.sampler import euler_decode
from selftok.tokenizer.schedule import first_visible, visible_mask
from selftok.tokenizer.space import VaeSpace, build_space
from selftok.training.checkpoint import own_state

CONFIG_FILE, WEIGHTS_FILE, VAE_FOLDER = "config.json", "model.safetensors", "vae"
FORMAT = "selftok-tokenizer/1"


@dataclass
class StepOutput:
    """What one training forward returns (kept as a dataclass so DDP sees a plain forward)."""

    loss: torch.Tensor  # [B] decoder MSE per sample
    commitment: torch.Tensor
    z: torch.Tensor
    codes: torch.Tensor


def save_vae(space: VaeSpace, folder: Path) -> None:
    """The VAE's diffusers folder, without the path it was loaded from (diffusers records it as
    ``_name_or_path``), so the saved bytes do not depend on where the project lives."""
    space.vae.save_pretrained(folder)
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("_name_or_path", None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def vae_digest(config: TokenizerConfig) -> str | None:
    """sha256 of the VAE weights a config points at (None when it points at none)."""
    if config.vae_path is None:
        return None
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(config.vae_path).glob("*.safetensors")))).hexdigest()


def save_weights(module: nn.Module, folder: Path, config: TokenizerConfig, kind: str, space: nn.Module | None = None) -> None:
    """``model_type`` is what selftok.mlflow_model dispatches on when the registry loads the folder.
    A VAE ``space`` is saved beside the weights and the config points at it by a relative path."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(space, VaeSpace):
        save_vae(space, folder / VAE_FOLDER)
        config = dataclasses.replace(config, vae_path=VAE_FOLDER)
    save_file(own_state(module), str(folder / WEIGHTS_FILE), metadata={"format": FORMAT, "kind": kind})
    config.save(folder / CONFIG_FILE, format=FORMAT, kind=kind, model_type=f"selftok-{kind}")


def read_config(folder: Path) -> tuple[TokenizerConfig, str]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer config here")
    data: dict[str, Any] = json.loads(path.read_text())
    if data.pop("format", None) != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} folder")
    config = TokenizerConfig.from_dict({k: v for k, v in data.items() if k not in ("kind", "model_type")})
    if config.vae_path is not None and not Path(config.vae_path).is_absolute():  # saved relative to the folder
        config = dataclasses.replace(config, vae_path=str(Path(folder) / config.vae_path))
    return config, data.get("kind", "")


def same_networks(a: TokenizerConfig, b: TokenizerConfig) -> bool:
    """Equal configs and the same VAE weights, wherever each folder keeps its copy."""
    return dataclasses.replace(a, vae_path=None) == dataclasses.replace(b, vae_path=None) and vae_digest(a) == vae_digest(b)


def load_weights(module: nn.Module, folder: Path, prefix: str = "") -> None:
    """Load the keys under ``prefix`` (stripped); the frozen space and other parts may be absent."""
    state = {k[len(prefix) :]: v for k, v in load_file(str(Path(folder) / WEIGHTS_FILE)).items() if k.startswith(prefix)}
    if not prefix:
        state = {k: v for k, v in state.items() if not k.startswith("renderer.")}
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("space.", "renderer."))]
    if missing or unexpected:
        raise RuntimeError(f"{folder}: weights do not match the model: missing {missing}, unexpected {unexpected}")


class SelftokTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.space = build_space(config)
        channels, size = self.space.channels, self.space.size
        self.encoder = Encoder(channels, size, config)
        self.quantizer = Quantizer(config.encoder_width, config)
        self.decoder = MMDiT(channels, size, config)
        self.renderer: Renderer | None = None

    # --- training ------------------------------------------------------------------------
    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.space.channels, self.space.size, self.space.size)

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, limit: torch.Tensor) -> StepOutput:
        """Training forward on inputs already in the model's space (``self.space.encode(images)``, which
        the loop caches): encode, quantise, noise to x_t, decode with the schedule's mask; plain
        MSE against the objective's target."""
        quant = self.quantizer(self.encoder(x0))
        tt = t.view(-1, 1, 1, 1)
        x_t = tt * noise + (1 - tt) * x0
        k = self.config.num_tokens
        visible = visible_mask(first_visible(t, k, self.config.schedule), limit, k)
        out = self.decoder(x_t, t, quant.quantized, visible)
        target = noise - x0 if self.config.objective == "velocity" else x0
        loss = (out - target).pow(2).flatten(1).mean(1)
        return StepOutput(loss=loss, commitment=quant.commitment, z=quant.z, codes=quant.codes)

    # --- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """float images [-1, 1] [B, 3, H, W] -> LongTensor [B, K], coarsest token first."""
        return self.quantizer.nearest(self.quantizer.project(self.encoder(self.space.encode(images))))

    def tokens(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.lookup(codes)

    def _limit(self, batch: int, prefix: int | None, device: torch.device) -> torch.Tensor:
        k = self.config.num_tokens
        if prefix is not None and not 0 <= prefix <= k:
            raise ValueError(f"prefix must be in 0..{k}, got {prefix}")
        return torch.full((batch,), k if prefix is None else prefix, dtype=torch.long, device=device)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        out = self.decoder(x, t, tokens, visible)
        if self.config.objective == "velocity":
            return out
        return (x - out) / t.view(-1, 1, 1, 1).clamp_min(1e-4)

    @torch.no_grad()
    def decode(
        self, codes: torch.Tensor, steps: int = 20, prefix: int | None = None, seed: int = 0, guidance: float = 1.0
    ) -> torch.Tensor:
        """Codes [B, K] -> images [-1, 1] by Euler ODE; ``prefix`` keeps only v1..v_prefix visible.

        ``guidance`` > 1 mixes in the no-token prediction (classifier-free guidance).
        """
        device = codes.device
        tokens = self.tokens(codes)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(self.input_shape(codes.shape[0]), generator=generator).to(device)

        def velocity(x: torch.Tensor, t: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
            v = self.velocity(x, t, tokens, visible)
            if guidance != 1.0:
                v_free = self.velocity(x, t, tokens, torch.zeros_like(visible))
                v = v_free + guidance * (v - v_free)
            return v

        limit = self._limit(codes.shape[0], prefix, device)
        x = euler_decode(velocity, noise, steps, num_tokens=self.config.num_tokens, schedule=self.config.schedule, limit=limit)
        return self.space.decode(x).clamp(-1, 1)

    @torch.no_grad()
    def render(self, codes: torch.Tensor, prefix: int | None = None) -> torch.Tensor:
        """Codes [B, K] -> images [-1, 1] in one deterministic pass of the renderer."""
        if self.renderer is None:
            raise RuntimeError("no renderer attached: load one with from_pretrained(..., renderer=DIR)")
        limit = self._limit(codes.shape[0], prefix, codes.device)
        visible = torch.arange(self.config.num_tokens, device=codes.device)[None] < limit[:, None]
        return self.space.decode(self.renderer(self.tokens(codes), visible)).clamp(-1, 1)

    def new_renderer(self, from_decoder: bool = True) -> Renderer:
        renderer = Renderer(self.space.channels, self.space.size, self.config)
        if from_decoder:
            renderer.init_from_decoder(self.decoder, self.config.objective)
        return renderer.to(next(self.decoder.parameters()).device)

    # --- persistence ---------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        state_owner = nn.ModuleDict({"encoder": self.encoder, "quantizer": self.quantizer, "decoder": self.decoder})
        save_weights(state_owner, Path(folder), self.config, kind="tokenizer", space=self.space)

    def save_renderer(self, folder: str | Path) -> None:
        """The renderer folder is self-contained (tokenizer weights too), so it loads on its own."""
        if self.renderer is None:
            raise RuntimeError("no renderer to save")
        save_weights(self, Path(folder), self.config, kind="renderer", space=self.space)

    @classmethod
    def from_pretrained(cls, folder: str | Path, renderer: str | Path | None = None) -> SelftokTokenizer:
        """Load a tokenizer folder (optionally with a renderer folder), or a renderer folder alone."""
        config, kind = read_config(Path(folder))
        if renderer is None and kind == "renderer":
            folder, renderer = Path(folder), Path(folder)
        elif kind != "tokenizer":
            raise ValueError(f"{folder}: holds a {kind or 'unknown'} model, not a tokenizer")
        model = cls(config)
        if renderer is not None:
            renderer_config, kind = read_config(Path(renderer))
            if kind != "renderer" or not same_networks(renderer_config, config):
                raise ValueError(f"{renderer}: not a renderer for the tokenizer in {folder}")
            model.renderer = Renderer(model.space.channels, model.space.size, config)
            load_weights(model.renderer, Path(renderer), prefix="renderer.")
        load_weights(model, Path(folder), prefix="")
        return model.eval()

    def predict(self, model_input: Any, mode: str = "encode", steps: int = 20) -> Any:
        """MLflow pyfunc entry: uint8 images [N, 3, H, W] -> codes, or codes -> uint8 images (render/decode)."""
        x = torch.as_tensor(numpy.asarray(model_input))
        if mode == "encode":
            return self.encode(to_unit(x)).numpy()
        if mode == "render":
            return to_uint8(self.render(x.long())).numpy()
        if mode == "decode":
            return to_uint8(self.decode(x.long(), steps=steps)).numpy()
        raise ValueError(f"mode must be encode, render or decode, got {mode!r}")
