"""Re-tokenising accepted images into Selftok code shards, one source shard per unit of work.

Each source shard maps to one code shard with the same name, written atomically next to a
small JSON receipt holding the digest of its inputs (source shard bytes, accepted keys,
tokenizer weights). A shard whose receipt matches is not redone, so an interrupted run resumes
where it stopped. Shards are independent: here a process pool maps over them; on a cluster the
same `tokenize_shard` is mapped by Prefect over a Dask or Ray task runner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selftok.data.codes import code_sample
from selftok.data.dataset import CAPTIONED, accepted_manifest, decode_png, to_unit
from selftok.data.shards import read_samples, write_shards
from selftok.errors import ShardError
from selftok.hashing import file_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardJob:
    source: Path  # accepted-data shard
    target: Path  # code shard to write
    keys: tuple[str, ...]  # accepted keys in this shard, sorted
    tokenizer_digest: str

    @property
    def receipt(self) -> Path:
        return self.target.with_suffix(".json")

    def digest(self) -> str:
        text = json.dumps([file_hash(self.source), list(self.keys), self.tokenizer_digest])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def is_done(self) -> bool:
        if not (self.target.is_file() and self.receipt.is_file()):
            return False
        try:
            return json.loads(self.receipt.read_text()).get("inputs") == self.digest()
        except json.JSONDecodeError:
            return False


def plan(root: Path, tokenizer_digest: str, codes: Path) -> list[ShardJob]:
    """One job per accepted shard of the captioned splits (the image-only split has no use as
    codes), writing into the code folder ``codes``."""
    manifest = accepted_manifest(root)
    manifest = manifest[manifest["split"].isin(CAPTIONED)]
    jobs = []
    for (split, shard), rows in manifest.groupby(["split", "shard"], sort=True):
        target = root / codes / str(split) / Path(str(shard)).name
        jobs.append(ShardJob(root / str(shard), target, tuple(sorted(rows["key"])), tokenizer_digest))
    return jobs


_worker: dict[str, Any] = {}


def _init_worker(load: Callable[[], Any], threads: int) -> None:
    torch.set_num_threads(threads)
    _worker["tokenizer"] = load()


def tokenize_shard(job: ShardJob, batch_size: int, tokenizer: Any = None) -> list[str]:
    """Encode the accepted samples of one shard; returns the keys written, in order."""
    tokenizer = tokenizer if tokenizer is not None else _worker["tokenizer"]
    wanted = set(job.keys)
    try:
        samples = [s for s in read_samples(job.source) if s["__key__"] in wanted]
    except ShardError as error:
        raise ShardError(f"tokenize: {error}") from error
    found = {s["__key__"] for s in samples}
    if found != wanted:
        raise ShardError(f"{job.source}: {len(wanted - found)} accepted samples are missing, e.g. {sorted(wanted - found)[:3]}")
    samples.sort(key=lambda s: s["__key__"])
    codes: list[np.ndarray] = []
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        images = torch.from_numpy(np.stack([decode_png(s["png"]) for s in batch])).permute(0, 3, 1, 2)
        codes += list(tokenizer.encode(to_unit(images)).cpu().numpy())
    out = [code_sample(s["__key__"], c, s["txt"].decode(), s["json"].decode()) for s, c in zip(samples, codes, strict=True)]
    staging = job.target.parent / f".{job.target.stem}.partial"
    written = write_shards(out, staging, shard_size=max(1, len(out)))
    if written:
        os.replace(written[0], job.target)
    staging.rmdir()
    job.receipt.write_text(json.dumps({"inputs": job.digest(), "keys": [s["__key__"] for s in samples]}, indent=1) + "\n")
    return [s["__key__"] for s in samples]


def _run_job(job: ShardJob, batch_size: int) -> list[str]:
    return tokenize_shard(job, batch_size)


def run_jobs(
    jobs: Sequence[ShardJob],
    load: Callable[[], Any],
    batch_size: int,
    workers: int,
    on_done: Callable[[ShardJob], None] | None = None,
) -> tuple[int, int]:
    """Run the jobs not already done; returns (shards encoded, shards skipped)."""
    todo = [job for job in jobs if not job.is_done()]
    skipped = len(jobs) - len(todo)
    if skipped:
        log.info("tokenize: %d of %d shards already done with unchanged inputs; skipping them", skipped, len(jobs))
    if not todo:
        return 0, skipped
    if workers <= 1:
        tokenizer = load()
        for job in todo:
            tokenize_shard(job, batch_size, tokenizer)
            if on_done:
                on_done(job)
        return len(todo), skipped
    threads = max(1, torch.get_num_threads() // workers)
    # spawn, not fork: forking a process whose torch thread pools are running can deadlock.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(load, threads)) as pool:
        for job, _ in zip(todo, pool.map(_run_job, todo, [batch_size] * len(todo)), strict=True):
            if on_done:
                on_done(job)
    return len(todo), skipped
