"""A tiny pretrained causal LM with its own text tokenizer, and a tiny pretrained VAE, saved to
folders the way the hub ships them: what `vlm.init_from` and `vae.pretrained` read, offline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

LM_BOS, LM_EOS = "<s>", "</s>"  # the base model's own BOS / EOS; it has no PAD


def save_tiny_llama(folder: Path, captions: Sequence[str], hidden: int = 32, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer and a 2-layer Llama over it, saved to ``folder``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[LM_BOS, LM_EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(captions), trainer)
    text = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=LM_BOS, eos_token=LM_EOS)
    config = LlamaConfig(vocab_size=len(text), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    text.save_pretrained(folder)
    return folder


def save_tiny_vae(folder: Path, latent_channels: int = 6, seed: int = 0) -> Path:
    """An AutoencoderKL with 4x downsampling (another shape than the smoke profile's own VAE)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        block_out_channels=(8, 8, 8), layers_per_block=1, latent_channels=latent_channels,
                        norm_num_groups=4, sample_size=16, mid_block_add_attention=False)
    vae.save_pretrained(folder)
    return folder
