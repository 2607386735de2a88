"""Sequence layouts of pretraining, and their loss masks.

    t2i    [BOS] [T2I] caption [BOV] v1..vK [EOV] [EOS]
    i2t    [BOS] [I2T] [BOV] v1..vK [EOV] caption [EOS]
    image  [BOS] [IMG] [BOV] v1..vK [EOV] [EOS]
    text   [BOS] [TXT] caption [EOS]

Visual tokens always enter coarse-to-fine (v1 = codes[0]). A text->image sample whose caption
is dropped (caption dropout) is the unconditional branch of classifier-free guidance: its
prompt ``[BOS] [T2I] [BOV]`` is what generation feeds as the unconditional row. A mask marks
which tokens are prediction targets: with ``loss_on="all"`` every token after the task token,
with ``"target"`` only the modality the layout generates (plus its closing tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from selftok.vlm.vocab import VLMTokenizer

TASKS: tuple[str, ...] = ("t2i", "i2t", "image", "text")
IGNORE = -100


@dataclass(frozen=True)
class Example:
    ids: list[int]
    target: list[bool]  # target[i]: ids[i] is predicted (from ids[:i]) and counted in the loss
    task: int  # index into TASKS


def layout(tokenizer: VLMTokenizer, task: str, caption: Sequence[int], codes: Sequence[int], loss_on: str = "all") -> Example:
    """One training sequence; ``caption`` are BPE ids, ``codes`` code ids (coarse-to-fine)."""
    tk = tokenizer
    cap = list(caption)
    image = [tk.bov_id, *(c + tk.visual_offset for c in codes), tk.eov_id] if task != "text" else []
    # Each segment: (ids, is it the generated modality of this layout?)
    if task == "t2i":
        segments = [([tk.t2i_id], False), (cap, False), (image[:1], False), (image[1:], True), ([tk.eos_id], True)]
    elif task == "i2t":
        segments = [([tk.i2t_id], False), (image, False), (cap, True), ([tk.eos_id], True)]
    elif task == "image":
        segments = [([tk.img_id], False), (image, True), ([tk.eos_id], True)]
    elif task == "text":
        segments = [([tk.txt_id], False), (cap, True), ([tk.eos_id], True)]
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    ids, target = [tk.bos_id], [False]
    for i, (part, generated) in enumerate(segments):
        ids += part
        counted = generated if loss_on == "target" else i > 0  # never predict BOS or the task token
        target += [counted] * len(part)
    return Example(ids, target, TASKS.index(task))


def t2i_prompt(tokenizer: VLMTokenizer, caption: Sequence[int]) -> list[int]:
    """The generation prompt for an image: everything up to and including [BOV]."""
    return [tokenizer.bos_id, tokenizer.t2i_id, *caption, tokenizer.bov_id]


def i2t_prompt(tokenizer: VLMTokenizer, codes: Sequence[int]) -> list[int]:
    """The captioning prompt: the image span, closed by [EOV]."""
    tk = tokenizer
    return [tk.bos_id, tk.i2t_id, tk.bov_id, *(int(c) + tk.visual_offset for c in codes), tk.eov_id]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T], right-padded with [PAD]
    attention_mask: torch.Tensor  # [B, T]
    labels: torch.Tensor  # [B, T], IGNORE where not a target
    task: torch.Tensor  # [B]


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    length = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        labels[row, :n] = torch.where(torch.tensor(e.target), ids[row, :n], IGNORE)
    return Batch(ids, mask, labels, torch.tensor([e.task for e in examples]))


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for generate(): left padding, so every row's next token is the last column."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        if r:
            ids[i, length - len(r) :] = torch.tensor(list(r))
            mask[i, length - len(r) :] = 1
    return ids, mask


def sample_examples(
    tokenizer: VLMTokenizer,
    captions: Sequence[Sequence[int]],
    codes: torch.Tensor,
    weights: Sequence[float],
    caption_dropout: float,
    loss_on: str,
    generator: torch.Generator,
) -> list[Example]:
    """One training example per (caption, codes) pair; its layout is drawn from the task mix."""
    probs = torch.tensor(weights, dtype=torch.float)
    tasks = torch.multinomial(probs / probs.sum(), len(captions), replacement=True, generator=generator)
    dropped = torch.rand(len(captions), generator=generator) < caption_dropout
    out = []
    for i, cap in enumerate(captions):
        task = TASKS[int(tasks[i])]
        cap = [] if task == "t2i" and bool(dropped[i]) else cap
        out.append(layout(tokenizer, task, cap, codes[i].tolist(), loss_on))
    return out
