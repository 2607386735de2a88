"""Mixed precision and TF32 for the loops that run their own steps instead of accelerate's (the
scene evaluator, GRPO): the same ``mixed_precision`` and ``tf32`` keys mean the same there, and a
CPU run never depends on them."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from selftok.training.params import PrecisionParams

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def apply_tf32(tf32: bool | None) -> None:
    """Set TF32 matmuls and convolutions on a GPU when the section says; otherwise touch nothing."""
    if tf32 is not None and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def autocast(params: PrecisionParams, device: torch.device | str) -> AbstractContextManager[object]:
    """Apply ``tf32`` and return the forward passes' context: autocast to ``mixed_precision``
    (absent: bf16) on a GPU device, nothing on a CPU or with ``no``. fp16 runs without loss
    scaling in these loops, so bf16 is the safe choice."""
    apply_tf32(params.tf32)
    precision = params.mixed_precision or "bf16"
    if torch.device(device).type != "cuda" or precision == "no":
        return nullcontext()
    return torch.autocast("cuda", dtype=DTYPES[precision])
