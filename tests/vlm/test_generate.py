from __future__ import annotations

import torch
from transformers import LogitsProcessorList
from vlm_fixtures import Data, K

from selftok.vlm.generate import ImageSpanSampler, _greedy_config, caption, generate_images, guide, sample_codes
from selftok.vlm.sequences import left_pad, t2i_prompt
from selftok.vlm.vocab import VLMTokenizer


def test_image_spans_hold_exactly_k_visual_tokens_then_eov(lm: torch.nn.Module, tokenizer: VLMTokenizer, data: Data) -> None:
    tk = tokenizer
    rows = [t2i_prompt(tk, c) for c in tk.encode_text(data.captions[:3])] + [t2i_prompt(tk, [])] * 3
    ids, mask = left_pad(rows, tk.pad_id)
    sampler = ImageSpanSampler(tokenizer=tk, prompt_length=ids.shape[1], conditional_rows=3, cfg_scale=2.0, temperature=1.0, top_k=0,
                               generator=torch.Generator().manual_seed(0))
    out = lm.generate(
        input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([sampler]),
        generation_config=_greedy_config(tk, K + 3, True, tk.eos_id),  # room for more: the span must still close at K
    )
    new = out[:, ids.shape[1] :]
    assert bool(tk.is_visual(new[:, :K]).all())
    assert new[:, K].tolist() == [tk.eov_id] * 6
    assert torch.equal(new[:3, :K], new[3:, :K])  # conditional and unconditional rows grow the same image
    codes = generate_images(lm, tk, data.captions[:2], n=3, cfg_scale=3.0, top_k=5, seed=1)
    assert codes.shape == (6, K) and int(codes.min()) >= 0 and int(codes.max()) < tk.num_codes


def test_cfg_at_scale_one_is_conditional_sampling(lm: torch.nn.Module, tokenizer: VLMTokenizer, data: Data) -> None:
    cond, uncond = torch.randn(4, 50), torch.randn(4, 50)
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    assert torch.allclose(guide(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)
    prompts = [t2i_prompt(tokenizer, c) for c in tokenizer.encode_text(data.captions[:4])]
    plain = sample_codes(lm, tokenizer, prompts, None, 1.0, 0, torch.Generator().manual_seed(3))
    guided = sample_codes(lm, tokenizer, prompts, 1.0, 1.0, 0, torch.Generator().manual_seed(3))
    assert torch.equal(plain, guided)
    assert not torch.equal(plain, sample_codes(lm, tokenizer, prompts, 4.0, 1.0, 0, torch.Generator().manual_seed(3)))


def test_sampling_is_seeded_and_the_kv_cache_changes_nothing(lm: torch.nn.Module, tokenizer: VLMTokenizer, data: Data) -> None:
    first = generate_images(lm, tokenizer, data.captions[:2], n=2, cfg_scale=2.0, seed=5)
    assert torch.equal(first, generate_images(lm, tokenizer, data.captions[:2], n=2, cfg_scale=2.0, seed=5))
    assert torch.equal(first, generate_images(lm, tokenizer, data.captions[:2], n=2, cfg_scale=2.0, seed=5, use_cache=False))


def test_captions_are_text(lm: torch.nn.Module, tokenizer: VLMTokenizer, data: Data) -> None:
    texts = caption(lm, tokenizer, data.codes[:3], max_tokens=6)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert all("<v_" not in t and "[" not in t for t in texts)


def test_min_p_one_keeps_only_the_most_likely_token(lm: torch.nn.Module, tokenizer: VLMTokenizer, data: Data) -> None:
    greedy = [generate_images(lm, tokenizer, data.captions[:2], n=1, cfg_scale=3.0, seed=s, min_p=1.0) for s in (0, 1)]
    assert torch.equal(greedy[0], greedy[1])  # no randomness left: the guided draw is confined to the conditional argmax
    prompts = [t2i_prompt(tokenizer, c) for c in tokenizer.encode_text(data.captions[:2])]
    ids, mask = left_pad(prompts, tokenizer.pad_id)
    with torch.no_grad():
        first = lm(input_ids=ids, attention_mask=mask).logits[:, -1, tokenizer.visual_offset :].argmax(-1)
    assert torch.equal(greedy[0][:, 0], first)


def test_a_forced_prefix_is_kept_and_continued_as_the_model_would(lm: torch.nn.Module, tokenizer: VLMTokenizer, data: Data) -> None:
    prompts = [t2i_prompt(tokenizer, c) for c in tokenizer.encode_text(data.captions[:3])]  # three lengths: left padding
    greedy = sample_codes(lm, tokenizer, prompts, 3.0, 1.0, 0, torch.Generator().manual_seed(0), min_p=1.0)
    for k in (1, K // 2, K - 1):
        completed = sample_codes(lm, tokenizer, prompts, 3.0, 1.0, 0, torch.Generator().manual_seed(9), min_p=1.0, prefix=greedy[:, :k])
        assert torch.equal(completed, greedy), k  # the argmax continuation of its own prefix, in both CFG branches
    other = torch.randint(0, tokenizer.num_codes, (3, K // 2), generator=torch.Generator().manual_seed(1))
    forced = sample_codes(lm, tokenizer, prompts, 3.0, 1.0, 0, torch.Generator().manual_seed(2), prefix=other)
    assert forced.shape == (3, K) and torch.equal(forced[:, : K // 2], other)
    rows = torch.cat([other, other])  # generate_images: prompt-major rows, chunked like the prompts
    many = generate_images(lm, tokenizer, data.captions[:3], n=2, cfg_scale=3.0, seed=4, batch_size=4, prefix=rows)
    assert many.shape == (6, K) and torch.equal(many[:, : K // 2], rows)
