"""Can an encoder architecture see shape at all? Train it *supervised* and watch.

The tokenizer's codes carry colour but no shape (scripts/code_probe.py). This separates "the
objective never asks for shape" from "the encoder cannot compute it": a network is trained for a
few hundred steps to predict which shapes and colours a scene holds, and scored on held-out
scenes every ``--every`` steps.

``--read`` says which features of the tokenizer encoder the label head sees:
- ``queries``: the K output vectors (what gets quantised);
- ``patches``: the patch stream after the last block;
- ``stem``: the stem's patch features alone (no attention).
The head is a small MLP on each vector, max-pooled over vectors ("is there a star anywhere"),
or with ``--head flatten`` one linear map of all vectors concatenated. ``--cnn`` trains a
reference 5-layer CNN instead. Examples:

    python scripts/encoder_probe.py --stem linear
    python scripts/encoder_probe.py --stem conv --read patches
    python scripts/encoder_probe.py --cnn
    python scripts/encoder_probe.py --vae models/vae   # the encoder on VAE latents (patch 1)
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from code_probe import N_FIT, N_TEST, labelled_scenes
from torch import nn

from selftok.data.dataset import to_unit
from selftok.tokenizer.encoder import Encoder
from selftok.tokenizer.params import TokenizerParams
from selftok.tokenizer.space import PixelSpace, VaeSpace, load_vae


def reference_cnn(classes: int) -> nn.Module:
    """A plain CNN of about the evaluator's kind: what "able to see shape" looks like."""
    convs, widths = [], [3, 32, 64, 64, 96, 96]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        convs += [nn.Conv2d(a, b, 3, stride=2 if i in (1, 3) else 1, padding=1), nn.GELU()]
    return nn.Sequential(*convs, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], classes))


class EncoderProbe(nn.Module):
    """The tokenizer encoder with a label head on the features that ``read`` names."""

    def __init__(self, stem: str, read: str, head: str, classes: int, space: PixelSpace | VaeSpace) -> None:
        super().__init__()
        patch = 4 if isinstance(space, PixelSpace) else 1
        config = TokenizerParams(encoder_stem=stem, encoder_patch=patch).architecture(32)
        self.encoder, self.read, self.pool = Encoder(space.channels, space.size, config), read, head == "max"
        width = config.encoder_width
        count = config.num_tokens if read == "queries" else self.encoder.num_patches
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, classes)) if self.pool else nn.Linear(count * width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.read == "stem":
            return self.encoder.embed(x)
        return self.encoder(x) if self.read == "queries" else self.encoder.streams(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(h).amax(1) if self.pool else self.head(h.flatten(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stem", choices=["linear", "conv", "hybrid"], default="linear")
    ap.add_argument("--read", choices=["queries", "patches", "stem"], default="queries")
    ap.add_argument("--head", choices=["max", "flatten"], default="max")
    ap.add_argument("--cnn", action="store_true", help="the reference CNN instead of the tokenizer encoder")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--every", type=int, default=150)
    ap.add_argument("--vae", type=Path, help="a train_vae folder: the encoder reads its scaled latents (patch 1)")
    ap.add_argument("--cache", type=Path, default=Path("ablation_runs/tokenizer"))
    args = ap.parse_args()
    if args.cnn and args.vae:
        ap.error("--cnn reads pixels; --vae is for the tokenizer encoder")
    images, shapes, colors = labelled_scenes(N_FIT + N_TEST, args.cache)
    space = VaeSpace(load_vae(args.vae), 32) if args.vae else PixelSpace(32)
    x, y, n_shapes = torch.cat([space.encode(b) for b in to_unit(images).split(500)]), torch.cat([shapes, colors], 1), shapes.shape[1]
    torch.manual_seed(0)
    net = reference_cnn(y.shape[1]) if args.cnn else EncoderProbe(args.stem, args.read, args.head, y.shape[1], space)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    test, start = slice(N_FIT, N_FIT + N_TEST), time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, N_FIT, (64,))
        loss = F.binary_cross_entropy_with_logits(net(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.every == 0:
            net.eval()
            with torch.no_grad():
                right = ((net(x[test]) > 0) == y[test].bool()).float()
            net.train()
            row = {"step": step, "seconds": round(time.perf_counter() - start), "shape_label_accuracy": right[:, :n_shapes].mean().item(),
                   "color_label_accuracy": right[:, n_shapes:].mean().item()}
            name = "cnn" if args.cnn else f"encoder/{args.stem}/{args.read}/{args.head}" + ("/vae" if args.vae else "")
            print(json.dumps({"model": name, **row}), flush=True)


if __name__ == "__main__":
    main()
