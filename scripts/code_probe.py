"""Which scene attributes can be read back from a tokenizer's codes? An MLP probe per attribute.

PSNR cannot say whether codes carry shape: a disc where a square was costs a few pixels. This
probe trains a small MLP from an image's code vectors (codebook entries of its K codes,
concatenated) to the multi-hot set of shapes and of colours in the scene, on the first 5000
training scenes, and reports per-label accuracy on the next 1000 next to the majority-label
baseline. ``--continuous`` probes the projected encoder output before quantisation instead,
which tells an encoder that never learned an attribute from a quantiser that drops it. Works
for both arms (Selftok and the spatial control). Example:

    python scripts/code_probe.py models/tokenizer
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizer_ablation import HOLDOUT, scenes
from torch import nn

from selftok.data.dataset import to_unit
from selftok.data.scenes import COLORS, SHAPES, SceneConfig, SceneGenerator
from selftok.tokenizer.metrics import batched
from selftok.tokenizer.registry import load_tokenizer

N_FIT, N_TEST = 5000, 1000


def presence(scene_objects: list[list[str]], names: list[str]) -> torch.Tensor:
    """Multi-hot [N, len(names)]: which names occur in each scene."""
    y = torch.zeros(len(scene_objects), len(names))
    for i, objects in enumerate(scene_objects):
        for name in objects:
            y[i, names.index(name)] = 1.0
    return y


def labelled_scenes(n: int, cache: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first n training scenes: uint8 images, shape presence [n, 5], colour presence [n, C]."""
    generator = SceneGenerator(SceneConfig(image_size=32, holdout=HOLDOUT), seed=0)
    objects = [generator.scene("train", i).objects for i in range(n)]
    shapes = presence([[o.shape for o in s] for s in objects], list(SHAPES))
    colors = presence([[o.color for o in s] for s in objects], list(COLORS))
    return scenes("train", n, 32, cache), shapes, colors


def probe(features: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> dict[str, float]:
    """Fit on the first N_FIT rows, score the next N_TEST."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(features.shape[1], 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, y.shape[1]))
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.05)
    for _ in range(steps):
        index = torch.randint(0, N_FIT, (128,))
        loss = F.binary_cross_entropy_with_logits(net(features[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    test = slice(N_FIT, N_FIT + N_TEST)
    with torch.no_grad():
        right = (net(features[test]) > 0) == y[test].bool()
    share = y[test].mean(0)
    return {
        "label_accuracy": right.float().mean().item(),
        "majority_baseline": torch.maximum(share, 1 - share).mean().item(),
        "scenes_all_right": right.all(1).float().mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokenizer", type=Path, help="a trained tokenizer folder (either arm)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--continuous", action="store_true", help="probe the vectors before quantisation")
    ap.add_argument("--cache", type=Path, default=Path("ablation_runs/tokenizer"), help="where scene renders are cached")
    args = ap.parse_args()
    images, shapes, colors = labelled_scenes(N_FIT + N_TEST, args.cache)
    tokenizer = load_tokenizer(args.tokenizer).eval()
    quantizer = tokenizer.quantizer
    to_space = tokenizer.space.encode if hasattr(tokenizer, "space") else (lambda x: x)  # the spatial arm reads pixels
    with torch.no_grad():
        if args.continuous:
            features = batched(lambda x: quantizer.project(tokenizer.encoder(to_space(x))), to_unit(images), 256).flatten(1)
        else:
            features = quantizer.codebook[batched(tokenizer.encode, to_unit(images), 256)].flatten(1)
    features = (features - features.mean(0)) / (features.std(0) + 1e-6)
    result = {
        "shape": probe(features, shapes, args.steps, args.seed),
        "color": probe(features, colors, args.steps, args.seed),
    }
    print(json.dumps({"tokenizer": str(args.tokenizer), "continuous": args.continuous, **result}, indent=1))


if __name__ == "__main__":
    main()
