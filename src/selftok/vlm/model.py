"""SelftokVLM: the Llama backbone + its vocabulary + the sampling recipe, saved as one folder.

Folder layout (``models/vlm``)::

    config.json        {"model_type": "selftok-vlm", ...}: what the MLflow registry loads by
    lm/                transformers LlamaForCausalLM (config.json, model.safetensors)
    tokenizer/         the BPE + visual-token vocabulary (tokenizer.json, vlm_vocab.json)

Weights are safetensors only; nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import LlamaForCausalLM

from selftok.vlm.arch import llama_config
from selftok.vlm.generate import caption, generate_images
from selftok.vlm.params import SamplingParams, VLMParams
from selftok.vlm.vocab import VLMTokenizer

MODEL_TYPE, FORMAT = "selftok-vlm", "selftok-vlm/1"
LM_DIR, TOKENIZER_DIR = "lm", "tokenizer"


def build_lm(params: VLMParams, tokenizer: VLMTokenizer, seed: int) -> LlamaForCausalLM:
    """A freshly initialised backbone; the seed fixes the initial weights."""
    config = llama_config(
        params.size, len(tokenizer), tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id,
        params.hidden_size, params.layers, params.heads,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


class SelftokVLM:
    def __init__(self, lm: LlamaForCausalLM, tokenizer: VLMTokenizer, sampling: SamplingParams | None = None) -> None:
        if lm.config.vocab_size != len(tokenizer):
            raise ValueError(f"model vocabulary {lm.config.vocab_size} != tokenizer vocabulary {len(tokenizer)}")
        self.lm = lm
        self.tokenizer = tokenizer
        self.sampling = sampling or SamplingParams()

    def generate(self, prompts: list[str], n: int = 1, **overrides: Any) -> torch.Tensor:
        """Codes [len(prompts) * n, K] with the saved sampling recipe (keyword overrides win)."""
        s = self.sampling.model_copy(update=overrides)
        return generate_images(
            self.lm, self.tokenizer, prompts, n, s.cfg_scale, s.temperature, s.top_k, s.seed, s.batch_size, min_p=s.min_p
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
        lm = LlamaForCausalLM.from_pretrained(folder / LM_DIR, dtype=torch.float32).to(device).eval()
        return cls(lm, VLMTokenizer.from_pretrained(folder / TOKENIZER_DIR), SamplingParams(**config["sampling"]))
