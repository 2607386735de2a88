from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from vlm_fixtures import Data, K

from selftok.mlflow_model import load_folder
from selftok.vlm.model import SelftokVLM
from selftok.vlm.params import SamplingParams
from selftok.vlm.sequences import collate, layout
from selftok.vlm.vocab import VLMTokenizer


def test_save_and_load_give_identical_logits(lm: torch.nn.Module, tokenizer: VLMTokenizer, data: Data, tmp_path: Path) -> None:
    vlm = SelftokVLM(lm, tokenizer, SamplingParams(cfg_scale=2.0, samples_per_prompt=2))
    vlm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "selftok-vlm"
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))  # safetensors only
    loaded = load_folder(tmp_path)  # what the MLflow registry does
    assert isinstance(loaded, SelftokVLM) and loaded.sampling == vlm.sampling
    batch = collate([layout(tokenizer, "t2i", c, data.codes[i].tolist()) for i, c in enumerate(tokenizer.encode_text(data.captions[:4]))], tokenizer.pad_id)
    with torch.no_grad():
        before = lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        after = loaded.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(before, after)
    codes = loaded.predict(["a photo of a red circle"], n=2)
    assert len(codes) == 2 and len(codes[0]) == K
    assert len(loaded.predict(pd.DataFrame({"codes": [row for row in data.codes[:2].tolist()]}))) == 2
