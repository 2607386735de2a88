"""Worker for test_distributed.py (two processes under accelerate launch): trains a tiny tokenizer, dumps its state per rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tokenizer_helpers import color_images, tiny_params

from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.train import train_tokenizer
from selftok.training.loop import Callbacks, make_accelerator

torch.set_num_threads(1)
out = Path(sys.argv[1])
accelerator = make_accelerator()
params = tiny_params(steps=6, checkpoint_every=3, dead_threshold=0.9)
torch.manual_seed(0)
model = SelftokTokenizer(params.architecture(8))
resets: list[float] = []
result = train_tokenizer(model, color_images(64), params, seed=0, checkpoints=out / "ckpt",
                         callbacks=Callbacks(on_log=lambda step, logs: resets.append(logs["code_resets"])), accelerator=accelerator)
rank = accelerator.process_index
state = {k: v.double().sum().item() for k, v in model.state_dict().items()}
(out / f"rank{rank}.json").write_text(json.dumps({
    "world": accelerator.num_processes, "steps": result.steps, "state": state,
    "codebook": model.quantizer.codebook.tolist(), "resets": sum(resets),
}))
