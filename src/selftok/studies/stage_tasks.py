"""Each training stage's model and batches, built the way the stage builds them, for timing
(`selftok bench pipeline`, selftok.studies.throughput).

The models are fresh ones of the params' sizes and the images random ones of the data's size
(scene renders for the evaluator, which learns from their metadata): speed depends on neither
the weights nor the pixels, so nothing upstream has to exist. Each builder returns the stage's
training task for selftok.training.loop and what the task does to make one batch (its indexing,
decoding and collation), so that a step's time splits into batch making and the rest.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selftok.config import Params
from selftok.data.dataset import ImageSet, to_unit
from selftok.data.scenes import SceneGenerator, render
from selftok.eval.evaluator import EvaluatorConfig, SceneEvaluator, detection_loss, targets_for
from selftok.eval.geneval import prompt_sets, scene_config
from selftok.eval.params import EvaluatorParams
from selftok.eval.training import ColourLayers, augment
from selftok.rl.trainer import GRPO, RLRun, Scored, pretraining_loss
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.spatial import SpatialTokenizer
from selftok.tokenizer.spatial_train import SpatialTask
from selftok.tokenizer.train import RendererTask, RenderObjective, TokenizerTask, encode_all
from selftok.tokenizer.vae import VaeTask, build_vae, load_pretrained_vae
from selftok.training.loop import Task
from selftok.training.precision import autocast
from selftok.vlm.bench import scene_captions
from selftok.vlm.model import build_lm, build_vocabulary
from selftok.vlm.train import VLMTask, set_checkpointing

BATCHES = 4  # distinct batches of samples a bench draws from (its epoch)
CAPTIONS = 2048  # captions the VLM's text vocabulary is trained on (as the stage trains it on the train captions)

BatchFn = Callable[[torch.Tensor, torch.Generator], Any]


@dataclass(kw_only=True)
class StageBench:
    """One training stage's task as its loop runs it, with the loop knobs the stage uses."""

    stage: str
    task: Task
    n_samples: int
    batch_size: int
    lr: float
    grad_clip: float
    precision: Any  # the section's PrecisionParams (mixed_precision, tf32)
    batch: BatchFn  # the batch making inside the task's loss, on the same index and generator
    note: str = ""


class Skipped(Exception):
    """A stage that trains nothing under these params (say why)."""


def random_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _loop(params: Any) -> dict[str, Any]:
    """The loop knobs of a LoopParams section."""
    return {"batch_size": params.batch_size, "lr": params.lr, "grad_clip": params.grad_clip, "precision": params}


def vae_bench(p: Params, device: torch.device, workdir: Path) -> StageBench:
    v, size = p.vae, p.data.image_size
    if v.pretrained is not None:
        raise Skipped(f"vae.pretrained {v.pretrained!r}: the stage fits latent statistics, nothing trains")
    images = random_images(v.batch_size * BATCHES, size)
    task = VaeTask(build_vae(v, size).to(device), images, v, device)
    return StageBench(stage="train_vae", task=task, n_samples=len(images), batch=lambda i, g: to_unit(images[i]).to(device), **_loop(v))


def vae_folder(p: Params, workdir: Path) -> Path:
    """A VAE of the params' shape saved as a diffusers folder (the tokenizers read one from disk)."""
    folder = workdir / "vae"
    if not (folder / "config.json").is_file():
        vae = build_vae(p.vae, p.data.image_size) if p.vae.pretrained is None else load_pretrained_vae(p.vae, p.data.image_size)
        vae.save_pretrained(folder)
    return folder


def fresh_tokenizer(p: Params, workdir: Path) -> SelftokTokenizer:
    tokenizer = p.tokenizer.model_copy(update={"vae_path": str(vae_folder(p, workdir))})
    return SelftokTokenizer(tokenizer.architecture(p.data.image_size))


def tokenizer_bench(p: Params, device: torch.device, workdir: Path) -> StageBench:
    t = p.tokenizer
    images = random_images(t.batch_size * BATCHES, p.data.image_size)
    task = TokenizerTask(fresh_tokenizer(p, workdir).to(device), images, t, device)

    def batch(index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return task.latents[index].to(device), torch.randn(task.module.input_shape(len(index)), generator=generator).to(device)

    return StageBench(stage="train_tokenizer", task=task, n_samples=len(images), batch=batch, **_loop(t))


def renderer_bench(p: Params, device: torch.device, workdir: Path) -> StageBench:
    """As train_renderer sets it up: the frozen tokenizer's codes, a renderer from its decoder."""
    r = p.renderer
    images = random_images(r.batch_size * BATCHES, p.data.image_size)
    model = fresh_tokenizer(p, workdir).to(device).requires_grad_(False)
    codes = encode_all(model, images)
    model.renderer = model.new_renderer(from_decoder=r.init_from_decoder)
    model.renderer.requires_grad_(True)
    task = RendererTask(objective=RenderObjective(model.renderer, model.space, r.edge_weight), codes=codes,
                        codebook=model.quantizer.codebook, images=images, params=r, device=device)

    def batch(index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return task.codebook[task.codes[index].to(device)], to_unit(images[index]).to(device)

    return StageBench(stage="train_renderer", task=task, n_samples=len(images), batch=batch,
                      note="codes of an untrained tokenizer (speed does not depend on them)", **_loop(r))


def spatial_bench(p: Params, device: torch.device, workdir: Path) -> StageBench:
    s = p.control.spatial
    images = random_images(s.batch_size * BATCHES, p.data.image_size)
    task = SpatialTask(SpatialTokenizer(s.architecture(p.data.image_size)).to(device), images, s, device)
    return StageBench(stage="train_spatial", task=task, n_samples=len(images), batch=lambda i, g: to_unit(images[i]).to(device), **_loop(s))


def scene_set(p: Params, n: int) -> ImageSet:
    """``n`` train scenes of the params' world, rendered, with their metadata (what the evaluator learns from)."""
    generator = SceneGenerator(scene_config(p.data), p.data.scenes.seed)
    scenes = [generator.scene("train", i) for i in range(n)]
    images = torch.stack([torch.from_numpy(np.array(render(s).convert("RGB"))).permute(2, 0, 1) for s in scenes])
    return ImageSet(images=images.contiguous(), captions=[s.caption for s in scenes], metadata=[s.metadata() for s in scenes],
                    keys=[f"bench-{i:06d}" for i in range(n)])


class EvaluatorTask:
    """The scene evaluator's step (selftok.eval.training._Epochs.run) as a loop task: augment, detect, loss."""

    def __init__(self, model: SceneEvaluator, data: ImageSet, params: EvaluatorParams, device: torch.device) -> None:
        self.module, self.data, self.params, self.device = model, data, params, device
        self.targets = targets_for(data.metadata, model.config)
        self.layers = ColourLayers.from_set(data, model.config)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.module.parameters()), "lr": lr}]

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return augment(index, self.data.images[index], self.targets[index], self.layers, self.params, generator)

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        x, target = self.batch(index, generator)
        with autocast(self.params, self.device):
            losses = detection_loss(self.module, wrapped(x.to(self.device)), target.to(self.device))
        return losses["total"], losses

    def after_step(self, aux: Any, generator: torch.Generator) -> dict[str, float]:
        return {}


def evaluator_bench(p: Params, device: torch.device, workdir: Path) -> StageBench:
    e = p.evaluator
    data = scene_set(p, e.batch_size * BATCHES)
    config = EvaluatorConfig(image_size=p.data.image_size, grid=e.grid, width=e.width, score_threshold=e.score_threshold,
                             nms_radius=e.nms_radius)
    task = EvaluatorTask(SceneEvaluator(config).to(device), data, e, device)
    return StageBench(stage="train_evaluator", task=task, n_samples=len(data), batch=task.batch, batch_size=e.batch_size, lr=e.lr,
                      grad_clip=math.inf, precision=e, note="its own epoch loop, no gradient clipping (here: the norm only)")


def vlm_task(p: Params, device: torch.device, checkpointing: bool) -> VLMTask:
    """The VLM on (caption, codes) pairs of the params' K and codebook, its vocabulary trained on scene captions."""
    v = p.vlm
    captions = scene_captions(p.data.scenes.max_objects, p.seed, CAPTIONS)
    tokenizer = build_vocabulary(v, captions, p.tokenizer.codebook_size, p.tokenizer.num_tokens)
    lm = build_lm(v, tokenizer, p.seed)
    if checkpointing:
        set_checkpointing(lm, True)
    n = v.batch_size * BATCHES
    codes = torch.randint(0, tokenizer.num_codes, (n, tokenizer.num_tokens), generator=torch.Generator().manual_seed(0))
    ids = tokenizer.encode_text([captions[i % len(captions)] for i in range(n)])
    return VLMTask(lm=lm.to(device), tokenizer=tokenizer, captions=ids, codes=codes, params=v, device=device)


def vlm_bench(p: Params, device: torch.device, workdir: Path) -> StageBench:
    task = vlm_task(p, device, bool(p.vlm.gradient_checkpointing))
    return StageBench(stage="pretrain_vlm", task=task, n_samples=len(task.captions), batch=task.batch, **_loop(p.vlm))


def rl_grpo(p: Params, device: torch.device, workdir: Path) -> GRPO:
    """rl_finetune's GRPO on a fresh policy of the VLM's size; decoding and the judge's reward are
    stubbed (their cost is the renderer's and the evaluator's inference, not the policy's)."""
    r, size = p.rl, p.data.image_size
    task = vlm_task(p, device, checkpointing=False)
    seed = p.seed if r.seed is None else r.seed
    run = RLRun(lm=task.module, tokenizer=task.tokenizer, decode=lambda codes: torch.zeros(len(codes), 3, size, size),
                reward=lambda rows, images: Scored(torch.rand(len(rows)), [False] * len(rows)),
                features=lambda images: torch.zeros(len(images), 1), prompts=prompt_sets(p.data, p.seed, p.geneval)["rl_train"],
                sampling=p.vlm.sampling, seed=seed, ptx=pretraining_loss(task, r.ptx_batch, seed) if r.ptx_coef > 0 else None)
    return GRPO.start(run, r, Path(tempfile.mkdtemp(dir=workdir)))


BUILDERS: dict[str, Callable[[Params, torch.device, Path], StageBench]] = {
    "train_vae": vae_bench,
    "train_tokenizer": tokenizer_bench,
    "train_renderer": renderer_bench,
    "train_spatial": spatial_bench,
    "train_evaluator": evaluator_bench,
    "pretrain_vlm": vlm_bench,
}
