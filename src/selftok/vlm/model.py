"""SelftokVLM: the Llama backbone + its vocabulary + the sampling recipe, saved as one folder.

Folder layout (``models/vlm``)::

    config.json        {"model_type": "selftok-vlm", ...}: what the MLflow registry loads by
    lm/                a transformers causal LM (config.json, model.safetensors)
    tokenizer/         the BPE + visual-token vocabulary (tokenizer.json, vlm_vocab.json)

The backbone is a freshly initialised Llama of a size preset, or ``vlm.init_from``: any
transformers causal LM (the paper starts from Llama-3-8B) with its own text tokenizer, whose
vocabulary grows by the sequence format's specials and one token per code; the new embedding
rows start at the mean of the old ones, so the first steps see no out-of-distribution vectors.
Weights are safetensors only; nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedModel

from selftok.errors import ConfigError
from selftok.vlm.arch import llama_config
from selftok.vlm.generate import caption, generate_images
from selftok.vlm.params import SamplingParams, VLMParams
from selftok.vlm.vocab import VLMTokenizer

MODEL_TYPE, FORMAT = "selftok-vlm", "selftok-vlm/1"
LM_DIR, TOKENIZER_DIR = "lm", "tokenizer"


def _from_hub_or_folder(kind: str, loader: Any, ref: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(ref)``: a local folder as is, anything else a hub id (cache only
    when offline); a failure names ``vlm.init_from`` and the id."""
    local = Path(ref).is_dir()
    try:
        return loader.from_pretrained(ref, local_files_only=local, **kwargs)
    except (OSError, ValueError) as error:
        where = "local folder" if local else "hub id (not in the local cache, and downloads are off here)"
        raise ConfigError(f"vlm.init_from {ref!r}: cannot load the {kind} of this {where}: {str(error).splitlines()[0]}") from None


def build_vocabulary(params: VLMParams, captions: Sequence[str], num_codes: int, num_tokens: int) -> VLMTokenizer:
    """``vlm.init_from``'s text tokenizer extended by the visual vocabulary, or our BPE trained on the captions."""
    if params.init_from is None:
        return VLMTokenizer.build(captions, num_codes, num_tokens, params.text_vocab_size)
    return VLMTokenizer.extend(_from_hub_or_folder("tokenizer", AutoTokenizer, params.init_from), num_codes, num_tokens)


@torch.no_grad()
def grow_vocabulary(lm: PreTrainedModel, size: int, first_new: int) -> None:
    """Resize ``lm``'s embedding (and untied output head) to ``size`` rows; rows from ``first_new``
    on start at the mean of the rows before it."""
    lm.resize_token_embeddings(size, mean_resizing=False)
    tables = [lm.get_input_embeddings().weight]
    head = lm.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != tables[0].data_ptr():
        tables.append(head.weight)
    for table in tables:
        table[first_new:] = table[:first_new].mean(0)


def pretrained_lm(params: VLMParams, tokenizer: VLMTokenizer) -> PreTrainedModel:
    """``vlm.init_from`` in fp32 with its vocabulary grown to ``tokenizer``'s and our special ids set."""
    ref = str(params.init_from)
    lm = _from_hub_or_folder("model", AutoModelForCausalLM, ref, dtype=torch.float32)
    wrong = params.expected.mismatches(lm.config) if params.expected is not None else []
    if wrong:
        raise ConfigError(f"vlm.init_from {ref!r} is not the model the params expect: " + "; ".join(wrong))
    base = len(_from_hub_or_folder("tokenizer", AutoTokenizer, ref))
    grow_vocabulary(lm, len(tokenizer), min(base, lm.get_input_embeddings().weight.shape[0]))
    lm.config.pad_token_id, lm.config.bos_token_id, lm.config.eos_token_id = tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id
    return lm


def build_lm(params: VLMParams, tokenizer: VLMTokenizer, seed: int) -> PreTrainedModel:
    """A freshly initialised backbone (the seed fixes the initial weights), or ``vlm.init_from``'s."""
    if params.init_from is not None:
        return pretrained_lm(params, tokenizer)
    config = llama_config(
        params.size, len(tokenizer), tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id,
        params.hidden_size, params.layers, params.heads,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


class SelftokVLM:
    def __init__(self, lm: PreTrainedModel, tokenizer: VLMTokenizer, sampling: SamplingParams | None = None) -> None:
        if lm.config.vocab_size != len(tokenizer):
            raise ValueError(f"model vocabulary {lm.config.vocab_size} != tokenizer vocabulary {len(tokenizer)}")
        self.lm = lm
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingParams()

    def generate(self, prompts: list[str], n: int = 1, prefix: torch.Tensor | None = None, **overrides: Any) -> torch.Tensor:
        """Codes [len(prompts) * n, K] with the saved sampling recipe (keyword overrides win); ``prefix``
        (codes [len(prompts) * n, k]) forces each sample's first k codes."""
        s = self.sampling.model_copy(update=overrides)
        return generate_images(
            self.lm, self.tokenizer, prompts, n, s.cfg_scale, s.temperature, s.top_k, s.seed, s.batch_size, min_p=s.min_p, prefix=prefix
        )

    def caption(self, codes: torch.Tensor) -> list[str]:
        return caption(self.lm, self.tokenizer, codes, self.sampling.caption_max_tokens, self.sampling.batch_size)

    def predict(self, model_input: Any, **params: Any) -> list[Any]:
        """Registry entry point: prompts (a list, or a frame with a 'prompt' column) -> code lists;
        a frame with a 'codes' column -> captions."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else None
        if frame is not None and "codes" in frame:
            return self.caption(torch.tensor([list(c) for c in frame["codes"]], dtype=torch.long))
        prompts = list(frame["prompt"]) if frame is not None else [str(p) for p in model_input]
        n = int(params.pop("n", 1))
        return self.generate(prompts, n, **params).tolist()

    # --- persistence -----------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.lm.save_pretrained(folder / LM_DIR)
        self.tokenizer.save_pretrained(folder / TOKENIZER_DIR)
        config = {
            "model_type": MODEL_TYPE,
            "format": FORMAT,
            "num_tokens": self.tokenizer.num_tokens,
            "num_codes": self.tokenizer.num_codes,
            "sampling": self.sampling.model_dump(mode="json"),
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> SelftokVLM:
        folder = Path(folder)
        path = folder / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no VLM here; run `dvc repro pretrain_vlm` first")
        config = json.loads(path.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} folder")
        lm = AutoModelForCausalLM.from_pretrained(folder / LM_DIR, dtype=torch.float32).to(device).eval()
        return cls(lm, VLMTokenizer.from_pretrained(folder / TOKENIZER_DIR), SamplingParams(**config["sampling"]))
