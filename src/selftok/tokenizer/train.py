"""Training loops for the tokenizer (encoder + quantiser + decoder) and the renderer, on accelerate.

The same code runs in one CPU process and data-parallel under ``accelerate launch``: every rank
takes its slice of a global batch whose indices and noise derive from (seed, step, rank) only,
so a resumed run replays exactly what an uninterrupted one would have done. Codebook EMA
statistics and dead-code resets are reduced across ranks inside the quantiser.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from selftok.data.dataset import to_unit
from selftok.schema import LRDecay
from selftok.tokenizer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from selftok.tokenizer.loss import decoded_pixel_loss
from selftok.tokenizer.model import SelftokTokenizer, StepOutput, own_state
from selftok.tokenizer.params import LoopParams, RendererParams, TokenizerParams
from selftok.tokenizer.renderer import Renderer
from selftok.tokenizer.schedule import sample_limits
from selftok.tokenizer.space import PixelSpace

LogFn = Callable[[int, dict[str, float]], None]
EvalFn = Callable[[int], None]


@dataclass
class Callbacks:
    """Hooks for the stage: metrics every log interval, images/evaluation every eval interval (main process only)."""

    on_log: LogFn | None = None
    on_eval: EvalFn | None = None


@dataclass
class LoopConfig:
    steps: int
    batch_size: int
    lr_decay: LRDecay
    warmup_steps: int
    grad_clip: float
    checkpoint_every: int
    log_every: int
    eval_every: int
    seed: int

    @classmethod
    def from_params(cls, params: Any, seed: int) -> LoopConfig:
        """The loop fields of any training params section (selftok.tokenizer.params.LoopParams) by name."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "seed"]
        return cls(**{name: getattr(params, name) for name in names}, seed=seed)


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    seconds: float
    steps_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


class Task(Protocol):
    """What a loop trains: a module for accelerate to wrap and how one step uses it."""

    module: nn.Module

    def param_groups(self, lr: float) -> list[dict[str, Any]]: ...

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]: ...

    def after_step(self, aux: Any, generator: torch.Generator) -> dict[str, float]: ...


def make_accelerator() -> Accelerator:
    """CPU (gloo when launched with several processes) unless a GPU is present; bf16 on GPU."""
    gpu = torch.cuda.is_available()
    return Accelerator(cpu=not gpu, mixed_precision="bf16" if gpu else "no")


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def batch_indices(n: int, batch_size: int, step: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's share of the global batch of ``step``: epochs are seeded permutations."""
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} samples)")
    per_epoch = n // batch_size
    epoch, offset = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return perm[offset * batch_size : (offset + 1) * batch_size][rank::world]


def lr_factor(step: int, total: int, warmup: int, decay: LRDecay) -> float:
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to 10%


def run_loop(
    task: Task,
    n_samples: int,
    lr: float,
    loop: LoopConfig,
    checkpoints: Path,
    accelerator: Accelerator,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train ``task`` to ``loop.steps``, resuming from the newest checkpoint in ``checkpoints``."""
    callbacks = callbacks or Callbacks()
    groups = task.param_groups(lr)
    for group in groups:
        group["base_lr"] = group["lr"]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    found = latest_checkpoint(checkpoints)
    if found is not None:
        start, state, _ = load_checkpoint(found, optimizer)
        missing, unexpected = task.module.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("space.") for k in missing):
            raise RuntimeError(f"{found}: checkpoint does not match the model ({missing[:3]}, {unexpected[:3]})")
    wrapped, optimizer = accelerator.prepare(task.module, optimizer)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    history: list[dict[str, float]] = []
    started, window_start, window_steps = time.perf_counter(), time.perf_counter(), 0
    bar = tqdm(total=loop.steps, initial=start, disable=not main, desc="train", dynamic_ncols=True)
    for step in range(start, loop.steps):
        factor = lr_factor(step, loop.steps, loop.warmup_steps, loop.lr_decay)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        generator = step_generator(loop.seed, step, rank)
        index = batch_indices(n_samples, loop.batch_size, step, loop.seed, rank, world)
        wrapped.train()
        loss, aux = task.loss(wrapped, index, generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), loop.grad_clip)
        optimizer.step()
        logs = task.after_step(aux, generator)
        window_steps += 1
        bar.update(1)
        done = step + 1
        if done % loop.log_every == 0 or done == loop.steps:
            now = time.perf_counter()
            logs |= {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"]}
            logs["steps_per_s"] = window_steps / max(now - window_start, 1e-9)
            window_start, window_steps = now, 0
            logs = {k: v for k, v in logs.items() if v is not None}
            history.append({"step": done, **logs})
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if main and callbacks.on_log is not None:
                callbacks.on_log(done, logs)
        if done % loop.checkpoint_every == 0 or done == loop.steps:
            if main:
                save_checkpoint(checkpoints, done, own_state(accelerator.unwrap_model(wrapped)), optimizer, {})
            accelerator.wait_for_everyone()
        if main and callbacks.on_eval is not None and (done % loop.eval_every == 0 or done == loop.steps):
            callbacks.on_eval(done)
    bar.close()
    seconds = time.perf_counter() - started
    ran = loop.steps - start
    return TrainResult(loop.steps, start, seconds, ran / max(seconds, 1e-9), history)


def train_task(
    task_for: Callable[[torch.device], Task],
    n_samples: int,
    params: LoopParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None,
    accelerator: Accelerator | None,
) -> TrainResult:
    """Build a task on the accelerator's device and train it with ``params``' loop knobs."""
    accelerator = accelerator or make_accelerator()
    loop = LoopConfig.from_params(params, seed)
    return run_loop(task_for(accelerator.device), n_samples, params.lr, loop, checkpoints, accelerator, callbacks)


class TokenizerTask:
    """Joint encoder/quantiser/decoder training: flow-matching loss with the token schedule."""

    def __init__(self, model: SelftokTokenizer, images: torch.Tensor, params: TokenizerParams, device: torch.device) -> None:
        self.module = model
        self.images = images  # uint8 [N, 3, H, W], kept on CPU
        self.params = params
        self.device = device
        cache = params.cache_latents and not isinstance(model.space, PixelSpace)  # pixels: encoding is free
        self.latents = map_images(model.space.encode, images, device, desc="caching latents") if cache else None

    def inputs(self, index: torch.Tensor) -> torch.Tensor:
        """The batch in the model's input space: cached latents, or the images encoded now."""
        if self.latents is not None:
            return self.latents[index].to(self.device)
        return self.module.space.encode(to_unit(self.images[index]).to(self.device))

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Encoder, quantiser projection and token stream at lr; the image stream at lr * image_lr_scale."""
        image, other = [], []
        for name, param in self.module.named_parameters():
            if not param.requires_grad:
                continue
            is_token = name.startswith(("decoder.token_", "decoder.token_streams"))
            (other if name.startswith(("encoder.", "quantizer.")) or is_token else image).append(param)
        return [{"params": other, "lr": lr}, {"params": image, "lr": lr * self.params.image_lr_scale}]

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        p, model = self.params, self.module
        k = model.config.num_tokens
        x = self.inputs(index)
        b = x.shape[0]
        if not bool(model.quantizer.initialized):
            with torch.no_grad():
                z = model.quantizer.project(model.encoder(x), batch_stats=True)
            model.quantizer.initialize(z, generator=generator)
        t = torch.rand(b, generator=generator)
        pure = torch.rand(b, generator=generator) < p.pure_noise_fraction
        t = torch.where(pure, torch.ones_like(t), t)
        limit = sample_limits(b, k, p.prefix_dropout, p.no_token_fraction, generator)
        limit = torch.where(pure, torch.full_like(limit, k), limit)  # autoencoding samples see every token
        noise = torch.randn(model.input_shape(b), generator=generator)
        images = to_unit(self.images[index]).to(self.device) if p.pixel_weight > 0 else None
        out: StepOutput = wrapped(
            x, noise.to(self.device), t.to(self.device), limit.to(self.device), p.entropy_weight > 0, p.edge_weight,
            images, p.pixel_edge_weight,
        )
        loss = out.loss.mean() + p.commitment_weight * out.commitment
        if out.pixel is not None:
            loss = loss + p.pixel_weight * out.pixel.mean()
        if out.entropy is not None:
            loss = loss - p.entropy_weight * out.entropy
        return loss, out

    def after_step(self, aux: StepOutput, generator: torch.Generator) -> dict[str, float]:
        logs = {
            "decoder_mse": float(aux.loss.detach().mean()),
            "commitment": float(aux.commitment.detach()),
            **self.module.quantizer.ema_step(aux.z, aux.codes, generator),
        }
        if aux.entropy is not None:
            logs["entropy"] = float(aux.entropy.detach())
        if aux.pixel is not None:
            logs["pixel_loss"] = float(aux.pixel.detach().mean())
        return logs


def train_tokenizer(
    model: SelftokTokenizer,
    images: torch.Tensor,
    params: TokenizerParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    def task_for(device: torch.device) -> TokenizerTask:
        return TokenizerTask(model.to(device), images, params, device)

    return train_task(task_for, len(images), params, seed, checkpoints, callbacks, accelerator)


class RenderObjective(nn.Module):
    """Renderer + frozen input space: (edge-weighted) pixel MSE per sample (what accelerate wraps)."""

    def __init__(self, renderer: Renderer, space: nn.Module, edge_weight: float = 0.0) -> None:
        super().__init__()
        self.renderer = renderer
        self.space = space
        self.edge_weight = edge_weight

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return decoded_pixel_loss(self.space.decode, self.renderer(tokens, visible), images, self.edge_weight)


class RendererTask:
    def __init__(
        self, objective: RenderObjective, codes: torch.Tensor, codebook: torch.Tensor, images: torch.Tensor,
        params: RendererParams, device: torch.device,
    ) -> None:
        self.module = objective
        self.codes, self.codebook, self.images = codes, codebook.to(device), images
        self.params, self.device = params, device

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.module.renderer.parameters() if p.requires_grad], "lr": lr}]

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        k = self.codes.shape[1]
        tokens = self.codebook[self.codes[index].to(self.device)]
        limit = sample_limits(len(index), k, self.params.prefix_dropout, 0.0, generator).to(self.device)
        visible = torch.arange(k, device=self.device)[None] < limit[:, None]
        mse = wrapped(tokens, visible, to_unit(self.images[index]).to(self.device))
        return mse.mean(), mse

    def after_step(self, aux: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        return {"pixel_mse": float(aux.detach().mean())}


@torch.no_grad()
def map_images(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device, batch: int = 256, desc: str = ""
) -> torch.Tensor:
    """``fn`` over uint8 images [N, 3, H, W] in batches (as [-1, 1] floats on ``device``), gathered on the CPU."""
    starts = tqdm(range(0, len(images), batch), desc=desc, disable=not desc, dynamic_ncols=True, leave=False)
    return torch.cat([fn(to_unit(images[i : i + batch]).to(device)).cpu() for i in starts])


def encode_all(model: SelftokTokenizer, images: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] of uint8 images, in eval mode."""
    model.eval()
    return map_images(model.encode, images, next(model.parameters()).device, desc="encoding codes")


def train_renderer(
    model: SelftokTokenizer,
    images: torch.Tensor,
    params: RendererParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None = None,
    accelerator: Accelerator | None = None,
) -> TrainResult:
    """Train ``model.renderer`` (created if absent) on the frozen tokenizer's codes of ``images``."""
    accelerator = accelerator or make_accelerator()
    model.to(accelerator.device).requires_grad_(False)
    codes = encode_all(model, images)
    if model.renderer is None:
        model.renderer = model.new_renderer(from_decoder=params.init_from_decoder)
    model.renderer.requires_grad_(True)
    objective = RenderObjective(model.renderer, model.space, params.edge_weight)
    task = RendererTask(objective, codes, model.quantizer.codebook, images, params, accelerator.device)
    result = run_loop(task, len(images), params.lr, LoopConfig.from_params(params, seed), checkpoints, accelerator, callbacks)
    model.renderer.eval()
    return result
