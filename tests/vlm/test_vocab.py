from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vlm_fixtures import C, Data, K

from selftok.vlm.vocab import SPECIALS, VLMTokenizer, visual_token


def test_every_code_round_trips_through_its_token(tokenizer: VLMTokenizer) -> None:
    codes = torch.arange(C)
    ids = tokenizer.code_to_token(codes)
    assert torch.equal(tokenizer.token_to_code(ids), codes)
    assert tokenizer.text.convert_ids_to_tokens(ids.tolist()) == [visual_token(c) for c in range(C)]
    assert bool(tokenizer.is_visual(ids).all())
    assert len(tokenizer) == tokenizer.visual_offset + C  # visual tokens are the last, contiguous ids


def test_text_and_specials_are_not_visual(tokenizer: VLMTokenizer, data: Data) -> None:
    text_ids = torch.tensor(tokenizer.encode_text(data.captions[:1])[0] + list(range(len(SPECIALS))))
    assert not bool(tokenizer.is_visual(text_ids).any())
    with pytest.raises(ValueError):
        tokenizer.token_to_code(text_ids)
    with pytest.raises(ValueError):
        tokenizer.code_to_token(torch.tensor([C]))


def test_captions_round_trip_and_the_vocabulary_survives_saving(tokenizer: VLMTokenizer, data: Data, tmp_path: Path) -> None:
    ids = tokenizer.encode_text(data.captions)
    assert [tokenizer.decode_text(i) for i in ids] == data.captions
    assert tokenizer.decode_text([*ids[0], tokenizer.eos_id, *ids[1]]) == data.captions[0]  # stops at [EOS]
    tokenizer.save_pretrained(tmp_path)
    loaded = VLMTokenizer.from_pretrained(tmp_path)
    assert (loaded.visual_offset, loaded.num_codes, loaded.num_tokens, len(loaded)) == (tokenizer.visual_offset, C, K, len(tokenizer))
    assert loaded.encode_text(data.captions) == ids
    assert loaded.text.convert_tokens_to_ids(visual_token(7)) == tokenizer.visual_offset + 7
