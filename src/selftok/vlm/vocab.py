"""The VLM vocabulary: a BPE text tokenizer trained on the captions, specials, and one token per code.

Ids are laid out so that the code <-> token mapping is one offset: special tokens first (ids
0..8), then the BPE vocabulary, then ``<v_0>..<v_{C-1}>`` contiguously. The mapping is checked
when a vocabulary is built or loaded, so a tokenizer file that does not keep the layout fails
loudly instead of scrambling images.

A pretrained LM's own text tokenizer (``VLMTokenizer.extend``) keeps its ids: the specials the
sequence format needs and the visual tokens are appended after them, the visual tokens last.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, BOV, EOV = "[PAD]", "[BOS]", "[EOS]", "[BOV]", "[EOV]"
T2I, I2T, IMG, TXT = "[T2I]", "[I2T]", "[IMG]", "[TXT]"  # task tokens: what the sequence is for
SPECIALS: tuple[str, ...] = (PAD, BOS, EOS, BOV, EOV, T2I, I2T, IMG, TXT)
META_FILE = "vlm_vocab.json"


def visual_token(code: int) -> str:
    return f"<v_{code}>"


def train_bpe(captions: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE on the captions: any text encodes (no unknown token), decoding is exact."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(captions), trainer)
    return tokenizer


class VLMTokenizer:
    """Text tokenizer + visual token range + the image length K (what every sequence layout needs)."""

    def __init__(self, text: PreTrainedTokenizerFast, num_codes: int, num_tokens: int, specials: Sequence[str] = SPECIALS) -> None:
        """``specials``: the tokens playing [PAD], [BOS], ... [TXT] in that order (a pretrained
        tokenizer may lend its own BOS / EOS / PAD)."""
        self.text = text
        self.num_codes = num_codes
        self.num_tokens = num_tokens
        self.specials = tuple(specials)
        ids = text.convert_tokens_to_ids(list(self.specials))
        if None in ids or text.unk_token_id in ids or len(set(ids)) != len(SPECIALS):
            raise ValueError(f"special tokens {self.specials} must be distinct tokens of the vocabulary, got ids {ids}")
        self.pad_id, self.bos_id, self.eos_id, self.bov_id, self.eov_id, self.t2i_id, self.i2t_id, self.img_id, self.txt_id = ids
        self.special_ids = frozenset(ids) | frozenset(text.all_special_ids)
        self.visual_offset = text.convert_tokens_to_ids(visual_token(0))
        last = text.convert_tokens_to_ids(visual_token(num_codes - 1))
        if last != self.visual_offset + num_codes - 1 or len(text) != self.visual_offset + num_codes:
            raise ValueError("visual tokens <v_0>..<v_C-1> must be the last, contiguous ids of the vocabulary")

    @classmethod
    def build(cls, captions: Iterable[str], num_codes: int, num_tokens: int, text_vocab_size: int) -> VLMTokenizer:
        bpe = train_bpe(captions, text_vocab_size)
        bpe.add_tokens([AddedToken(visual_token(i), normalized=False, single_word=False) for i in range(num_codes)])
        text = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD)
        return cls(text, num_codes, num_tokens)

    @classmethod
    def extend(cls, text: PreTrainedTokenizerFast, num_codes: int, num_tokens: int) -> VLMTokenizer:
        """A pretrained LM's text tokenizer with the sequence format's specials and one token per
        code appended (its own BOS / EOS / PAD play those roles when it has them)."""
        own = {BOS: text.bos_token, EOS: text.eos_token, PAD: text.pad_token}
        specials = [own.get(name) or name for name in SPECIALS]
        missing = [name for name in specials if text.convert_tokens_to_ids(name) in (None, text.unk_token_id)]
        text.add_tokens([AddedToken(name, special=True, normalized=False) for name in missing], special_tokens=True)
        text.add_tokens([AddedToken(visual_token(i), normalized=False, single_word=False) for i in range(num_codes)])
        text.bos_token, text.eos_token, text.pad_token = specials[1], specials[2], specials[0]
        return cls(text, num_codes, num_tokens, specials)

    def __len__(self) -> int:
        return len(self.text)

    # --- codes <-> token ids ---------------------------------------------------------------
    def code_to_token(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(f"codes must lie in 0..{self.num_codes - 1}, got {int(codes.min())}..{int(codes.max())}")
        return codes + self.visual_offset

    def is_visual(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.visual_offset) & (ids < self.visual_offset + self.num_codes)

    def token_to_code(self, ids: torch.Tensor) -> torch.Tensor:
        if not bool(self.is_visual(ids).all()):
            raise ValueError("token_to_code: some ids are not visual tokens")
        return ids - self.visual_offset

    # --- text ------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> list[list[int]]:
        """Caption -> BPE ids without any special token."""
        return self.text(list(texts), add_special_tokens=False)["input_ids"]

    def decode_text(self, ids: Sequence[int]) -> str:
        """Ids -> text, stopping at the first [EOS]; specials and visual tokens are dropped."""
        kept: list[int] = []
        for i in ids:
            if i == self.eos_id:
                break
            if i < self.visual_offset and int(i) not in self.special_ids:
                kept.append(int(i))
        return self.text.decode(kept).strip()

    # --- persistence -----------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.text.save_pretrained(folder)
        meta: dict[str, object] = {"num_codes": self.num_codes, "num_tokens": self.num_tokens}
        if self.specials != SPECIALS:  # a pretrained tokenizer's roles (our own folders stay as they were)
            meta["specials"] = list(self.specials)
        (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> VLMTokenizer:
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text())
        text = PreTrainedTokenizerFast.from_pretrained(folder)
        return cls(text, int(meta["num_codes"]), int(meta["num_tokens"]), meta.get("specials", SPECIALS))
