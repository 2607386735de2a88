"""Training the scene evaluator on validated real renders, with corruptions that make it a fair
judge of imperfect generated images (blur, noise, patchy noise, colour and contrast shifts) and
repainted object colours that keep colour apart from shape.

Each epoch draws its order and augmentations from a generator seeded by (seed, epoch), so a run
resumed from an epoch checkpoint (safetensors + JSON, no pickles) continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from selftok.data.dataset import ImageSet, to_unit
from selftok.data.scenes import BACKGROUNDS, COLORS
from selftok.eval.evaluator import (
    EvaluatorConfig,
    SceneEvaluator,
    accuracy,
    detection_loss,
    objects_from_metadata,
    targets_for,
)
from selftok.eval.params import (
    JUDGE_SEED_OFFSET,
    JUDGE_WIDTH_FACTOR,
    JUDGE_WIDTH_MULTIPLE,
    Corruption,
    EvaluatorParams,
)
from selftok.progress import track
from selftok.schema import params_hash
from selftok.training.checkpoint import STATE, latest_checkpoint, load_checkpoint, save_checkpoint
from selftok.training.precision import autocast
from selftok.training.schedules import warmup_cosine_lr

log = logging.getLogger(__name__)

LogFn = Callable[[dict[str, float], int], None]


# --- corruptions --------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (sigma 0 leaves the image as is)."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x).clamp_min(1e-3)[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [N*C, K]
    flat = x.reshape(1, n * c, h, w)
    flat = torch.nn.functional.conv2d(
        torch.nn.functional.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n * c
    )
    flat = torch.nn.functional.conv2d(
        torch.nn.functional.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n * c
    )
    return flat.reshape(n, c, h, w)


def corrupt(x: torch.Tensor, spec: Corruption, generator: torch.Generator, random_strength: bool) -> torch.Tensor:
    """Corrupt model-space images. With ``random_strength`` every corruption is on for half the
    images at a uniform strength up to its maximum (augmentation); otherwise all are at full
    strength (the fixed degradation the degraded-render accuracy is measured under)."""
    n = x.shape[0]

    def strength() -> torch.Tensor:
        if not random_strength:
            return torch.ones(n)
        return torch.rand(n, generator=generator) * (torch.rand(n, generator=generator) < 0.5)

    def signed(*shape: int) -> torch.Tensor:
        return torch.rand(n, *shape, generator=generator) * 2 - 1

    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + spec.contrast * strength() * signed())[:, None, None, None]
    x = x + spec.color_shift * strength()[:, None, None, None] * signed(3, 1, 1)
    x = gaussian_blur(x, spec.blur_sigma * strength())
    h, w = x.shape[2:]
    coarse = torch.randn(n, 3, max(1, h // 4), max(1, w // 4), generator=generator)
    patchy = torch.nn.functional.interpolate(coarse, size=(h, w), mode="nearest")
    x = x + spec.patch_noise_std * strength()[:, None, None, None] * patchy
    x = x + spec.noise_std * strength()[:, None, None, None] * torch.randn(x.shape, generator=generator)
    return x.clamp(-1.0, 1.0)


@dataclass
class ColourLayers:
    """Training renders split into background + objects blended at a coverage alpha, recovered
    from the metadata (flat colours on a flat background, objects never overlap), so objects can
    be repainted in other palette colours: colour is then learnt apart from shape, including for
    colour-shape pairs the train split never shows."""

    alpha: torch.Tensor  # [N, H, W] object coverage
    color: torch.Tensor  # [N, H, W] palette index of the covering object, -1 on background
    background: torch.Tensor  # [N, 3] RGB
    palette: torch.Tensor  # [C, 3] RGB in the evaluator's colour order

    @classmethod
    def from_set(cls, data: ImageSet, config: EvaluatorConfig) -> ColourLayers:
        palette = torch.tensor([COLORS[c] for c in config.colors], dtype=torch.float32)
        index = {c: i for i, c in enumerate(config.colors)}
        n, _, h, w = data.images.shape
        alpha, color = torch.zeros(n, h, w), torch.full((n, h, w), -1, dtype=torch.long)
        background = torch.tensor([BACKGROUNDS[m["background"]] for m in data.metadata], dtype=torch.float32)
        for i, meta in enumerate(data.metadata):
            for obj in meta["objects"]:
                x0, y0, x1, y1 = (int(v) for v in obj["box"])
                pixels = data.images[i, :, y0:y1, x0:x1].float() - background[i, :, None, None]
                direction = palette[index[obj["color"]]] - background[i]
                coverage = (pixels * direction[:, None, None]).sum(0) / direction.dot(direction)
                alpha[i, y0:y1, x0:x1] = coverage.clamp(0.0, 1.0)
                color[i, y0:y1, x0:x1] = index[obj["color"]]
        return cls(alpha, color, background, palette)

    def paint(self, index: torch.Tensor, images: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
        """Repaint samples ``index`` (uint8 ``images``) with colour c -> mapping[row, c]; float 0..255."""
        color, alpha = self.color[index], self.alpha[index, ..., None]
        new = self.palette[mapping.gather(1, color.clamp_min(0).flatten(1)).view_as(color)]
        painted = alpha * new + (1 - alpha) * self.background[index][:, None, None, :]
        return torch.where((color >= 0)[:, None], painted.permute(0, 3, 1, 2), images.float())


def augment(
    index: torch.Tensor,
    images: torch.Tensor,
    target: torch.Tensor,
    layers: ColourLayers,
    params: EvaluatorParams,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 training images -> augmented model-space images and their targets: repainted
    colours, horizontal flips (every shape is left-right symmetric) and corruptions."""
    n, colours = images.shape[0], layers.palette.shape[0]
    shuffled = torch.argsort(torch.rand(n, colours, generator=generator), dim=1)
    repaint = torch.rand(n, generator=generator) < params.recolor_prob
    mapping = torch.where(repaint[:, None], shuffled, torch.arange(colours).expand(n, -1))
    x = layers.paint(index, images, mapping) / 127.5 - 1.0
    target = target.clone()
    target[..., 2] = mapping.gather(1, target[..., 2].long().flatten(1)).view_as(target[..., 2]).float()
    if params.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        flipped = target.flip(2)
        flipped[..., 3] = torch.where(flipped[..., 0] > 0.5, 1.0 - flipped[..., 3], flipped[..., 3])
        target = torch.where(flip[:, None, None, None], flipped, target)
    corrupted = corrupt(x, params.augment, generator, random_strength=True)
    keep = torch.rand(n, generator=generator) >= params.augment_prob
    return torch.where(keep[:, None, None, None], x, corrupted), target


def degrade(images: torch.Tensor, spec: Corruption, seed: int) -> torch.Tensor:
    """A fixed, seeded degradation of uint8 images; returns model-space floats."""
    return corrupt(to_unit(images), spec, torch.Generator().manual_seed(seed), random_strength=False)


# --- resumable state -----------------------------------------------------------------------
def _resume(
    folder: Path | None, fingerprint: str, model: SceneEvaluator, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, float]]]:
    """(epochs done, history) from the latest checkpoint of the same params and data, else (0, [])."""
    path = latest_checkpoint(folder) if folder is not None else None
    if path is None:
        return 0, []
    if json.loads((path / STATE).read_text()).get("fingerprint") != fingerprint:
        log.info("checkpoint %s is from other params or data; starting afresh", path)
        return 0, []
    epoch, weights, state = load_checkpoint(path, optimizer)
    model.load_state_dict(weights)
    log.info("resuming training from %s after epoch %d", path, epoch)
    return epoch, state["history"]


# --- training -------------------------------------------------------------------------------
def evaluate_parses(model: SceneEvaluator, images: torch.Tensor, data: ImageSet, params: EvaluatorParams) -> dict[str, float]:
    truths = [objects_from_metadata(m) for m in data.metadata]
    return accuracy(truths, model.parse(images), params.match_tolerance * model.config.image_size)


@dataclass(kw_only=True)
class _Epochs:
    """The evaluator's optimisation on one training set, an epoch at a time: each epoch draws its
    order and augmentations from (seed, epoch), so a resumed run continues exactly."""

    model: SceneEvaluator
    optimizer: torch.optim.Optimizer
    data: ImageSet
    targets: torch.Tensor
    layers: ColourLayers
    params: EvaluatorParams
    seed: int
    device: torch.device | str

    def run(self, epoch: int) -> dict[str, float]:
        """Train one epoch (the ragged tail dropped: BatchNorm dislikes tiny batches); its mean losses."""
        params, n = self.params, len(self.data)
        batch = min(params.batch_size, n)
        steps = max(1, n // batch)
        total = params.epochs * steps
        warmup = max(1, round(params.warmup_fraction * total))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator)
        self.model.train()
        sums: dict[str, float] = {}
        for step in range(steps):
            index = order[step * batch : (step + 1) * batch]
            x, t = augment(index, self.data.images[index], self.targets[index], self.layers, params, generator)
            for group in self.optimizer.param_groups:
                group["lr"] = warmup_cosine_lr(params.lr, epoch * steps + step, total, warmup)
            with autocast(params, self.device):
                losses = detection_loss(self.model, self.model(x.to(self.device)), t.to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            self.optimizer.step()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        return {f"loss_{k}": v / steps for k, v in sums.items()}


def train_evaluator(
    train: ImageSet,
    val: ImageSet,
    params: EvaluatorParams,
    seed: int,
    checkpoint_dir: Path | None = None,
    log_metrics: LogFn | None = None,
    device: torch.device | str = "cpu",
    label: str = "evaluator",
) -> tuple[SceneEvaluator, list[dict[str, float]]]:
    """Train on ``train`` renders, tracking accuracy on ``val`` each epoch; returns the model
    and the per-epoch history. Resumes from ``checkpoint_dir`` when it holds a checkpoint of
    the same params and data (the final one too, so an identical rerun does no training).
    ``label`` names the model in progress and logs (the stage trains an evaluator and a judge)."""
    config = EvaluatorConfig(
        image_size=int(train.images.shape[-1]),
        grid=params.grid,
        width=params.width,
        score_threshold=params.score_threshold,
        nms_radius=params.nms_radius,
    )
    # absent precision keys left out: a checkpoint from before they existed still resumes
    fingerprint = params_hash({"params": params.model_dump(mode="json", exclude_none=True), "seed": seed, "train": train.keys, "val": val.keys})
    torch.manual_seed(seed)
    model = SceneEvaluator(config).to(device)
    targets = targets_for(train.metadata, config)
    layers = ColourLayers.from_set(train, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay, betas=(0.9, 0.99))
    epochs = _Epochs(model=model, optimizer=optimizer, data=train, targets=targets, layers=layers, params=params, seed=seed,
                     device=device)
    start_epoch, history = _resume(checkpoint_dir, fingerprint, model, optimizer)
    for epoch in track(range(start_epoch, params.epochs), f"{label} epochs", total=params.epochs, initial=start_epoch):
        started = time.perf_counter()
        row = epochs.run(epoch)
        row |= {f"val_{k}": v for k, v in evaluate_parses(model, val.images, val, params).items()}
        row["epoch_seconds"] = time.perf_counter() - started
        history.append(row)
        if log_metrics is not None:
            log_metrics(row, epoch + 1)
        log.debug(  # the curves are in MLflow; the console shows the epochs' progress
            "%s epoch %d/%d: loss %.4f, val scene accuracy %.4f",
            label,
            epoch + 1,
            params.epochs,
            row["loss_total"],
            row["val_scene_accuracy"],
        )
        done = epoch + 1
        if checkpoint_dir is not None and (done % params.checkpoint_every == 0 or done == params.epochs):
            save_checkpoint(checkpoint_dir, done, model.state_dict(), optimizer, {"fingerprint": fingerprint, "history": history})
    return model.eval(), history


# --- the independent judge -----------------------------------------------------------------
def judge_params(params: EvaluatorParams) -> EvaluatorParams:
    """The evaluator's recipe at the judge's width (selftok.eval.params.JUDGE_WIDTH_FACTOR,
    rounded up to JUDGE_WIDTH_MULTIPLE): another architecture, the same data and training."""
    width = math.ceil(params.width * JUDGE_WIDTH_FACTOR / JUDGE_WIDTH_MULTIPLE) * JUDGE_WIDTH_MULTIPLE
    return params.model_copy(update={"width": width})


def judge_seed(seed: int) -> int:
    """The judge's seed: the run's, offset so its initialisation and augmentations are its own."""
    return seed + JUDGE_SEED_OFFSET
