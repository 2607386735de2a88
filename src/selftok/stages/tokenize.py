"""Stage `tokenize@ARM`: accepted images -> code shards of the arm ({codes}/{train,val} + manifest).

One stage per tokenizer arm (selftok.stages.arms): Selftok writes data/codes, the spatial
control data/codes_spatial, with the same code.

After encoding, a great-expectations suite checks the codes (within the codebook, length K,
every accepted sample exactly once) and a decode-back check renders a sample of codes and
compares them with the originals: the first thing to look at when an AR model makes garbage.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from selftok.data.code_checks import validate_codes
from selftok.data.codes import CODES_MANIFEST, load_codes
from selftok.data.dataset import CAPTIONED, accepted_manifest, load_split, to_uint8, to_unit
from selftok.data.retokenize import plan, run_jobs
from selftok.hashing import file_hash
from selftok.progress import Progress
from selftok.stages.arms import stage_arm
from selftok.stages.base import Metrics, StageContext
from selftok.tokenizer.metrics import psnr_8bit
from selftok.tokenizer.registry import AnyTokenizer
from selftok.viz import image_grid

log = logging.getLogger(__name__)


def decode_back(root: Path, tokenizer: AnyTokenizer, samples: int, folder: Path) -> tuple[float, torch.Tensor]:
    """Render val codes back to images; PSNR against the originals and a side-by-side grid."""
    codes = load_codes(root, "val", limit=samples, folder=folder)
    originals = load_split(root, "val", limit=samples)
    if codes.keys != originals.keys:
        raise ValueError("decode-back: code keys do not match accepted val keys; codes are stale or misordered")
    rendered = tokenizer.render(codes.codes)
    pairs = torch.stack([originals.images, to_uint8(rendered)], dim=1).flatten(0, 1)  # original, decoded, ...
    return float(psnr_8bit(rendered, to_unit(originals.images)).mean()), pairs


def run(ctx: StageContext) -> Metrics:
    params, arm = ctx.params.tokenize, stage_arm(ctx)
    digest = file_hash(ctx.path(arm.tokenizer))
    jobs = plan(ctx.root, digest, arm.codes)
    stale = {p for p in ctx.path(arm.codes).glob("*/shard-*") if p.with_suffix(".tar") not in {j.target for j in jobs}}
    for path in stale:
        path.unlink()
    for job in jobs:
        job.target.parent.mkdir(parents=True, exist_ok=True)
    pending = sum(len(job.keys) for job in jobs if not job.is_done())
    started = time.perf_counter()
    with Progress(len(jobs), "tokenize shards", initial=sum(job.is_done() for job in jobs)) as progress:
        encoded, skipped = run_jobs(
            jobs,
            functools.partial(arm.load_tokenizer, ctx.root),
            params.batch_size,
            params.workers,
            on_done=lambda _: progress.update(),
            address=params.dask_address,
        )
    seconds = time.perf_counter() - started
    rows = [
        {"key": key, "split": job.target.parent.name, "shard": str(job.target.relative_to(ctx.root))}
        for job in jobs
        for key in json.loads(job.receipt.read_text())["keys"]
    ]
    manifest = pd.DataFrame(rows).sort_values("key", kind="stable").reset_index(drop=True)
    manifest.to_parquet(ctx.path(arm.codes / CODES_MANIFEST), index=False)
    tokenizer = arm.load_tokenizer(ctx.root, with_renderer=True)
    config = tokenizer.config
    ctx.path(arm.codes / "info.json").write_text(
        json.dumps({"num_tokens": config.num_tokens, "codebook_size": config.codebook_size, "tokenizer": digest}, indent=1) + "\n"
    )
    if pending:
        ctx.log_metrics({"encode_images_per_s": pending / seconds})

    accepted = accepted_manifest(ctx.root)
    sets = {split: load_codes(ctx.root, split, folder=arm.codes) for split in CAPTIONED}
    expected = {split: list(accepted.loc[accepted["split"] == split, "key"]) for split in sets}
    validate_codes(sets, expected, config.num_tokens, config.codebook_size, ctx.path(arm.codes / "validation"))
    train = sets["train"]
    psnr_back, pairs = decode_back(ctx.root, tokenizer, params.check_samples, arm.codes)
    ctx.log_image(image_grid(pairs, columns=16, scale=3), "decode_back/val.png")
    log.info("tokenize: %d shards encoded, %d unchanged; decode-back PSNR %.2f dB", encoded, skipped, psnr_back)
    return {
        "n_train": int((manifest["split"] == "train").sum()),
        "n_val": int((manifest["split"] == "val").sum()),
        "num_tokens": config.num_tokens,
        "codebook_size": config.codebook_size,
        "codes_used_fraction": torch.unique(train.codes).numel() / config.codebook_size,
        "code_entropy_bits": _entropy(train.codes),
        "decode_back_psnr": psnr_back,
    }


def _entropy(codes: torch.Tensor) -> float:
    counts = np.bincount(codes.flatten().numpy())
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())
