"""The reconstruction table: every prefix k of the codes, decoded by diffusion and by the renderer.

Each row measures one decoder at one prefix length against the originals: 8-bit PSNR, SSIM,
the Frechet distance on evaluator features, evaluator fidelity (same objects parsed) and
shape/colour agreement per object. k=0 is the no-token baseline: what the decoder makes from
noise alone.
"""

from __future__ import annotations

from typing import Any

import torch

from selftok.data.dataset import to_unit
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import frechet_evaluator_distance, reconstruction_agreement
from selftok.tokenizer.metrics import batched, prefix_lengths, psnr_8bit, ssim_8bit
from selftok.tokenizer.quantizer import code_usage
from selftok.tokenizer.registry import AnyTokenizer


@torch.no_grad()
def reconstruction_table(
    tokenizer: AnyTokenizer,
    evaluator: SceneEvaluator,
    images: torch.Tensor,
    decode_steps: int,
    seed: int = 0,
    batch: int = 64,
    with_diffusion: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Rows {decoder, k, psnr, ssim, frechet_evaluator_distance, evaluator_fidelity and the
    position/shape/colour agreements} and the reconstructions per (decoder, k) for the report's image strips."""
    tokenizer.eval()
    target = to_unit(images)
    codes = batched(tokenizer.encode, target, batch)
    lengths = [0, *prefix_lengths(tokenizer.config.num_tokens)]
    decoders = {"renderer": lambda c, k: tokenizer.render(c, prefix=k)}
    if with_diffusion:
        decoders["diffusion"] = lambda c, k: tokenizer.decode(c, steps=decode_steps, prefix=k, seed=seed)
    rows, outputs = [], {}
    for name, decode in decoders.items():
        for k in lengths:
            recon = batched(lambda c, k=k, decode=decode: decode(c, k), codes, batch)
            outputs[f"{name}/{k}"] = recon
            rows.append(
                {
                    "decoder": name,
                    "k": k,
                    "psnr": float(psnr_8bit(recon, target).mean()),
                    "ssim": float(ssim_8bit(recon, target).mean()),
                    "frechet_evaluator_distance": frechet_evaluator_distance(evaluator, images, recon),
                    **reconstruction_agreement(evaluator, images, recon),
                }
            )
    return rows, outputs | {"codes": codes}


def row(table: list[dict[str, Any]], decoder: str, k: int) -> dict[str, Any]:
    return next(r for r in table if r["decoder"] == decoder and r["k"] == k)


def table_summary(table: list[dict[str, Any]], codes: torch.Tensor, num_tokens: int, codebook_size: int) -> dict[str, Any]:
    """Headline numbers of one tokenizer's table: renderer at all K, its prefix curve, the no-token
    baseline, code usage, and the diffusion decoder's where the tokenizer has one (Selftok)."""
    full = row(table, "renderer", num_tokens)
    diffusion = any(r["decoder"] == "diffusion" for r in table)
    summary = {
        "psnr_renderer": full["psnr"],
        "ssim_renderer": full["ssim"],
        "psnr_no_tokens": row(table, "diffusion" if diffusion else "renderer", 0)["psnr"],
        "prefix_psnr": {str(r["k"]): r["psnr"] for r in table if r["decoder"] == "renderer" and r["k"] > 0},
        "active_code_fraction": code_usage(codes, codebook_size)["active_code_fraction"],
        "evaluator_fidelity": full["evaluator_fidelity"],
        "shape_agreement": full["shape_agreement"],
        "color_agreement": full["color_agreement"],
        "frechet_evaluator_distance": full["frechet_evaluator_distance"],
    }
    if diffusion:
        summary["psnr_diffusion"] = row(table, "diffusion", num_tokens)["psnr"]
        summary["prefix_psnr_diffusion"] = {str(r["k"]): r["psnr"] for r in table if r["decoder"] == "diffusion" and r["k"] > 0}
    return summary
