"""Which half of the tokenizer is stuck? Memorise a few scenes with each half in isolation.

Autoencoding at t=1 (every token visible, the decoder sees no image), continuous codes, on
``--images`` training scenes:

- ``free_tokens``: the MMDiT decoder with free per-image token vectors (decoder capacity);
- ``linear_decoder``: the encoder with a linear map to pixels (encoder capacity);
- ``joint``: encoder -> projection (+ code norm, as configured) -> decoder, as in training.

If both halves memorise quickly but ``joint`` does not, the coupling is the problem (this is
how the all-positions-equal collapse was found; docs/tokenizer_ablation.md). Prints PSNR of
the training MSE every 50 steps and writes OUT/isolation_MODE.json.

    python scripts/tokenizer_isolation.py joint --steps 300 --set code_norm=none
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizer_ablation import scenes
from torch import nn

from selftok.config import parse_overrides
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.params import TokenizerParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["free_tokens", "linear_decoder", "joint"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], help="tokenizer param override KEY=VALUE")
    ap.add_argument("--out", type=Path, default=Path("ablation_runs/tokenizer"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = scenes("train", 6000, 32, args.out)[: args.images].float() / 127.5 - 1
    model = SelftokTokenizer(TokenizerParams(**parse_overrides(args.set)).architecture(32))
    k, d = model.config.num_tokens, model.config.code_dim
    t1, visible, blank = torch.ones(len(x)), torch.ones(len(x), k, dtype=torch.bool), torch.zeros_like(x)

    def decode(tokens: torch.Tensor) -> torch.Tensor:  # x0 = x_t - v at t=1 with x_t = 0
        return -model.decoder(blank, t1, tokens, visible)

    if args.mode == "free_tokens":
        free = nn.Parameter(torch.randn(len(x), k, d))
        params = [free, *model.decoder.parameters()]
        reconstruct = lambda: decode(F.normalize(free, dim=-1))  # noqa: E731
    elif args.mode == "linear_decoder":
        head = nn.Linear(k * d, x[0].numel())
        params = [*model.encoder.parameters(), *model.quantizer.parameters(), *head.parameters()]
        reconstruct = lambda: head(model.quantizer.project(model.encoder(x), batch_stats=True).flatten(1)).view_as(x)  # noqa: E731
    else:
        params = list(model.parameters())
        reconstruct = lambda: decode(model.quantizer.project(model.encoder(x), batch_stats=True))  # noqa: E731
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    curve, started = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        loss = (reconstruct() - x).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            psnr = 10 * math.log10(4 / float(loss.detach()))  # images span [-1, 1]
            curve.append({"step": step, "psnr": round(psnr, 2), "seconds": round(time.perf_counter() - started, 1)})
            print(args.mode, curve[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"isolation_{args.mode}.json").write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "curve": curve}, indent=1))


if __name__ == "__main__":
    main()
