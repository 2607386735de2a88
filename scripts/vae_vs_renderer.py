"""Where does an outline get lost: in the VAE, or in the tokens? A grid of val scenes in three
rows: the originals, the VAE's own reconstruction (encode, decode: no tokens), and the
tokenizer's renderer (encode to K codes, render). Prints both PSNRs. Example:

    python scripts/vae_vs_renderer.py --root . --out vae_vs_renderer.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image
from tokenizer_ablation import scenes

from selftok.data.dataset import to_unit
from selftok.stages.arms import SELFTOK
from selftok.tokenizer.metrics import psnr_8bit
from selftok.tokenizer.space import VaeSpace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="project with a trained tokenizer and renderer on VAE latents")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--n", type=int, default=16, help="val scenes in the grid")
    ap.add_argument("--cache", type=Path, default=Path("ablation_runs/tokenizer"), help="where the val scenes are cached")
    args = ap.parse_args()
    model = SELFTOK.load_tokenizer(args.root, with_renderer=True).eval()
    if not isinstance(model.space, VaeSpace):
        raise SystemExit(f"{args.root}: the tokenizer reads pixels; there is no VAE to compare with")
    x = to_unit(scenes("val", 128, model.config.image_size, args.cache)[: args.n])
    with torch.no_grad():
        vae = model.space.decode(model.space.encode(x)).clamp(-1, 1)
        rendered = model.render(model.encode(x)).clamp(-1, 1)
    print(f"VAE {float(psnr_8bit(vae, x).mean()):.2f} dB, renderer {float(psnr_8bit(rendered, x).mean()):.2f} dB (8-bit PSNR)")
    rows = [torch.cat(list(images), dim=2) for images in (x, vae, rendered)]
    pixels = ((torch.cat(rows, dim=1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)
    image.resize((image.width * 3, image.height * 3), Image.NEAREST).save(args.out)


if __name__ == "__main__":
    main()
