from __future__ import annotations

import torch
from vlm_fixtures import Data, K

from selftok.vlm.sequences import IGNORE, TASKS, collate, layout, left_pad, sample_examples, t2i_prompt
from selftok.vlm.vocab import VLMTokenizer


def test_layouts_follow_the_spec(tokenizer: VLMTokenizer) -> None:
    tk = tokenizer
    cap, codes = [40, 41, 42], list(range(K))
    v = [c + tk.visual_offset for c in codes]  # coarse-to-fine: v1 = codes[0] right after [BOV]
    assert layout(tk, "t2i", cap, codes).ids == [tk.bos_id, tk.t2i_id, *cap, tk.bov_id, *v, tk.eov_id, tk.eos_id]
    assert layout(tk, "i2t", cap, codes).ids == [tk.bos_id, tk.i2t_id, tk.bov_id, *v, tk.eov_id, *cap, tk.eos_id]
    assert layout(tk, "image", cap, codes).ids == [tk.bos_id, tk.img_id, tk.bov_id, *v, tk.eov_id, tk.eos_id]
    assert layout(tk, "text", cap, codes).ids == [tk.bos_id, tk.txt_id, *cap, tk.eos_id]
    assert t2i_prompt(tk, cap) == layout(tk, "t2i", cap, codes).ids[: len(cap) + 3]


def test_loss_masks(tokenizer: VLMTokenizer) -> None:
    tk = tokenizer
    cap, codes = [40, 41], list(range(K))
    every = layout(tk, "t2i", cap, codes, "all")
    assert every.target[:2] == [False, False] and all(every.target[2:])  # never BOS or the task token
    t2i = layout(tk, "t2i", cap, codes, "target")
    targets = [i for i, t in zip(t2i.ids, t2i.target, strict=True) if t]
    assert targets == t2i.ids[5:]  # v1..vK [EOV] [EOS], not the caption nor [BOV]
    i2t = layout(tk, "i2t", cap, codes, "target")
    assert [i for i, t in zip(i2t.ids, i2t.target, strict=True) if t] == [*cap, tk.eos_id]


def test_batches_pad_mask_and_drop_captions(tokenizer: VLMTokenizer, data: Data) -> None:
    tk = tokenizer
    captions = tk.encode_text(data.captions[:64])
    generator = torch.Generator().manual_seed(0)
    examples = sample_examples(tk, captions, data.codes[:64], [1, 0, 0, 0], 0.5, "all", generator)
    assert {TASKS[e.task] for e in examples} == {"t2i"}
    unconditional = [e for e in examples if e.ids[:3] == [tk.bos_id, tk.t2i_id, tk.bov_id]]
    assert 10 < len(unconditional) < 54  # about half the captions dropped
    batch = collate(examples, tk.pad_id)
    lengths = batch.attention_mask.sum(1)
    assert lengths.tolist() == [len(e.ids) for e in examples]
    assert bool((batch.labels[batch.attention_mask == 0] == IGNORE).all())
    assert bool((batch.input_ids[batch.attention_mask == 0] == tk.pad_id).all())
    ids, mask = left_pad([[1, 2], [1, 2, 3]], tk.pad_id)
    assert ids.tolist() == [[tk.pad_id, 1, 2], [1, 2, 3]] and mask.tolist() == [[0, 1, 1], [1, 1, 1]]
