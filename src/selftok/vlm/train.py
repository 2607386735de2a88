"""Pretraining of the VLM on code shards: next-token loss over mixed text/image sequences.

The loop itself is the project's accelerate loop (selftok.training.loop.run_loop): batches,
task draws and caption dropout derive from (seed, step, rank) only, so a run resumed from a
checkpoint replays exactly what an uninterrupted one would have done, and the same code runs
data-parallel under ``accelerate launch``. The loss is reported split by modality (visual vs
text targets) and by layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn import functional as F

from selftok.training.loop import Callbacks, LoopConfig, TrainResult, make_accelerator, run_loop
from selftok.vlm.params import VLMParams
from selftok.vlm.sequences import IGNORE, TASKS, Batch, collate, sample_examples
from selftok.vlm.vocab import VLMTokenizer


@dataclass
class LossParts:
    loss: torch.Tensor  # scalar, mean over target tokens
    sums: dict[str, float]  # summed token losses per group
    counts: dict[str, float]  # target tokens per group
    tokens: int  # non-pad tokens in the batch

    def means(self) -> dict[str, float]:
        return {f"loss_{k}": self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}


def token_losses(lm: nn.Module, batch: Batch, tokenizer: VLMTokenizer) -> LossParts:
    """Mean next-token loss over targets, plus per-modality and per-layout sums for logging."""
    logits = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    labels = batch.labels[:, 1:]
    per_token = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    per_token = per_token.view_as(labels)
    target = labels != IGNORE
    loss = per_token.sum() / target.sum().clamp_min(1)
    detached = per_token.detach()
    visual = target & (tokenizer.is_visual(labels) | (labels == tokenizer.eov_id))
    groups = {"visual": visual, "text": target & ~visual}
    for i, task in enumerate(TASKS):
        groups[task] = target & (batch.task.to(labels.device) == i)[:, None]
    sums = {k: float(detached[m].sum()) for k, m in groups.items()}
    counts = {k: float(m.sum()) for k, m in groups.items()}
    return LossParts(loss, sums, counts, int(batch.attention_mask.sum()))


class VLMTask:
    """What run_loop trains: the Llama backbone on (caption, codes) pairs."""

    def __init__(
        self,
        *,
        lm: nn.Module,
        tokenizer: VLMTokenizer,
        captions: Sequence[Sequence[int]],
        codes: torch.Tensor,
        params: VLMParams,
        device: torch.device,
    ) -> None:
        if codes.shape[1] != tokenizer.num_tokens:
            raise ValueError(f"codes have {codes.shape[1]} tokens but the vocabulary expects K={tokenizer.num_tokens}")
        self.module = lm
        self.tokenizer = tokenizer
        self.captions = list(captions)
        self.codes = codes
        self.params = params
        self.device = device
        self.weights = [params.mix.t2i, params.mix.i2t, params.mix.image, params.mix.text]
        self.tokens_seen = 0

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Weight decay on matrices only (not on norms), as usual for Llama pretraining."""
        decay, plain = [], []
        for name, param in self.module.named_parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 and "norm" not in name else plain).append(param)
        betas = tuple(self.params.betas)
        return [
            {"params": decay, "lr": lr, "weight_decay": self.params.weight_decay, "betas": betas},
            {"params": plain, "lr": lr, "weight_decay": 0.0, "betas": betas},
        ]

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        p = self.params
        examples = sample_examples(
            self.tokenizer, [self.captions[int(i)] for i in index], self.codes[index], self.weights,
            p.caption_dropout, p.loss_on, generator,
        )
        batch = collate(examples, self.tokenizer.pad_id)
        return Batch(*(t.to(self.device) for t in (batch.input_ids, batch.attention_mask, batch.labels, batch.task)))

    def loss(self, wrapped: nn.Module, index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, LossParts]:
        parts = token_losses(wrapped, self.batch(index, generator), self.tokenizer)
        self.tokens_seen += parts.tokens
        return parts.loss, parts

    def after_step(self, aux: LossParts, generator: torch.Generator) -> dict[str, float]:
        return aux.means() | {"tokens_per_step": float(aux.tokens)}


@torch.no_grad()
def evaluate_loss(
    lm: nn.Module,
    tokenizer: VLMTokenizer,
    captions: Sequence[Sequence[int]],
    codes: torch.Tensor,
    params: VLMParams,
    seed: int,
    batch_size: int = 64,
) -> dict[str, float]:
    """Held-out loss per modality and layout (fixed task draws, so curves are comparable)."""
    lm.eval()
    generator = torch.Generator().manual_seed(seed)
    weights = [params.mix.t2i, params.mix.i2t, params.mix.image, params.mix.text]
    device = next(lm.parameters()).device
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for start in range(0, len(captions), batch_size):
        examples = sample_examples(
            tokenizer, captions[start : start + batch_size], codes[start : start + batch_size], weights,
            params.caption_dropout, params.loss_on, generator,
        )
        b = collate(examples, tokenizer.pad_id)
        parts = token_losses(lm, Batch(*(t.to(device) for t in (b.input_ids, b.attention_mask, b.labels, b.task))), tokenizer)
        for k in parts.sums:
            sums[k] = sums.get(k, 0.0) + parts.sums[k]
            counts[k] = counts.get(k, 0.0) + parts.counts[k]
    total = sum(counts[k] for k in ("visual", "text"))
    out = {f"loss_{k}": sums[k] / counts[k] for k in sums if counts[k] > 0}
    out["loss"] = (sums["visual"] + sums["text"]) / max(total, 1.0)
    return out


def set_checkpointing(lm: nn.Module, on: bool) -> None:
    """Activation checkpointing of a transformers model on or off (its newer name when it has it)."""
    name = "activation_checkpointing" if hasattr(lm, "activation_checkpointing_enable") else "gradient_checkpointing"
    if on:
        getattr(lm, f"{name}_enable")(**{f"{name}_kwargs": {"use_reentrant": False}})
        lm.config.use_cache = False
    else:
        getattr(lm, f"{name}_disable")()
        lm.config.use_cache = True


def train_vlm(
    lm: nn.Module,
    tokenizer: VLMTokenizer,
    captions: Sequence[Sequence[int]],
    codes: torch.Tensor,
    params: VLMParams,
    seed: int,
    checkpoints: Path,
    callbacks: Callbacks | None = None,
    accelerator: Accelerator | None = None,
) -> tuple[TrainResult, VLMTask]:
    """Train ``lm`` to ``params.steps``, resuming from the newest checkpoint in ``checkpoints``."""
    accelerator = accelerator or make_accelerator(params)
    checkpointing = bool(params.gradient_checkpointing)
    if checkpointing:  # activations of each layer are recomputed in the backward pass: memory for compute
        set_checkpointing(lm, True)
    task = VLMTask(lm=lm.to(accelerator.device), tokenizer=tokenizer, captions=captions, codes=codes, params=params,
                   device=accelerator.device)
    result = run_loop(task, len(captions), params.lr, LoopConfig.from_params(params, seed), checkpoints, accelerator, callbacks)
    if checkpointing:
        set_checkpointing(lm, False)
    return result, task
