"""`vlm.init_from`: a pretrained causal LM with its own tokenizer, grown by the visual vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from tests.vlm.pretrained_fixtures import save_tiny_llama
from transformers import AutoTokenizer, LlamaForCausalLM
from vlm_fixtures import C, Data, K

from selftok.errors import ConfigError
from selftok.stages.arms import SELFTOK
from selftok.stages.base import run_stage
from selftok.vlm.model import SelftokVLM, build_lm, build_vocabulary
from selftok.vlm.params import LMExpected, VLMParams
from selftok.vlm.synthetic import write_synthetic_codes


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, data: Data) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("pretrained") / "llama", data.captions)


def test_the_vocabulary_extends_the_pretrained_tokenizer(base: Path, data: Data) -> None:
    tokenizer = build_vocabulary(VLMParams(size="tiny", init_from=str(base)), data.captions, C, K)
    original = AutoTokenizer.from_pretrained(base)
    assert (tokenizer.bos_id, tokenizer.eos_id) == (original.bos_token_id, original.eos_token_id)  # its own kept
    assert tokenizer.pad_id >= len(original) and tokenizer.bov_id >= len(original)  # the format's specials appended
    assert tokenizer.visual_offset + C == len(tokenizer)  # the codes last
    caption = data.captions[0]
    assert tokenizer.encode_text([caption]) == original([caption], add_special_tokens=False)["input_ids"]
    assert tokenizer.decode_text([tokenizer.bos_id, *tokenizer.encode_text([caption])[0], tokenizer.eos_id]) == caption


def test_new_embedding_rows_start_at_the_mean_of_the_old(base: Path, data: Data) -> None:
    params = VLMParams(size="tiny", init_from=str(base))
    tokenizer = build_vocabulary(params, data.captions, C, K)
    lm, original = build_lm(params, tokenizer, seed=0), LlamaForCausalLM.from_pretrained(base)
    n = original.config.vocab_size
    assert lm.config.vocab_size == len(tokenizer) and lm.config.pad_token_id == tokenizer.pad_id
    for new, old in ((lm.get_input_embeddings().weight, original.get_input_embeddings().weight), (lm.lm_head.weight, original.lm_head.weight)):
        assert torch.equal(new[:n], old)
        assert torch.allclose(new[n:], old.mean(0).expand(len(tokenizer) - n, -1))


def test_a_wrong_expected_shape_or_an_offline_hub_id_names_the_key(base: Path, data: Data) -> None:
    params = VLMParams(size="tiny", init_from=str(base), expected=LMExpected(
        hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=64, vocab_size=300, tie_word_embeddings=False, max_positions=256))
    tokenizer = build_vocabulary(params, data.captions, C, K)
    with pytest.raises(ConfigError, match=r"vlm\.expected\.hidden_size 64 != 32"):
        build_lm(params, tokenizer, seed=0)
    with pytest.raises(ConfigError, match=r"vlm\.init_from 'no-such-org/no-such-llm'.*hub id"):
        build_vocabulary(VLMParams(init_from="no-such-org/no-such-llm"), data.captions, C, K)


@pytest.mark.integration
def test_pretrain_stage_from_a_pretrained_lm_then_generate_and_caption(project: Path, base: Path) -> None:
    """The stage trains it (activation checkpointing on, bf16 asked for: a no-op on CPU), saves it
    as safetensors, and the saved VLM loads, generates and captions."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["vlm"] |= {"init_from": str(base), "gradient_checkpointing": True, "mixed_precision": "bf16", "tf32": True,
                      "steps": 6, "eval_every": 6, "checkpoint_every": 3, "log_every": 3}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    for name in ("tokenizer", "renderer", "evaluator"):  # upstream folders the stage requires; empty: no renders, no scores
        (project / "models" / name).mkdir(parents=True, exist_ok=True)
    write_synthetic_codes(project, SELFTOK.codes, n_train=32, n_val=16, num_tokens=K, num_codes=C, image_size=16, shard_size=32)
    metrics = run_stage("pretrain_vlm@selftok", project)
    assert metrics["steps"] == 6 and 0.0 <= metrics["comprehension"]["caption_accuracy"] <= 1.0
    folder = project / "models" / "vlm"
    assert (folder / "lm" / "model.safetensors").is_file() and not list(folder.rglob("*.bin"))
    vlm = SelftokVLM.from_pretrained(folder)
    assert vlm.tokenizer.bos_id == AutoTokenizer.from_pretrained(base).bos_token_id
    codes = vlm.generate(["a photo of a red circle"], 2)
    assert codes.shape == (2, K) and int(codes.max()) < C
    assert all(isinstance(text, str) for text in vlm.caption(codes))
