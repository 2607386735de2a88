"""Re-tokenising accepted images into Selftok code shards, one source shard per unit of work.

Each source shard maps to one code shard with the same name, written atomically next to a
small JSON receipt holding the digest of its inputs (source shard bytes, accepted keys,
tokenizer weights). A shard whose receipt matches is not redone, so an interrupted run resumes
where it stopped. Shards are independent: one worker encodes them in turn in this process;
more are mapped as Prefect tasks over a Dask cluster (selftok.data.shard_map), a local one or an
existing one, with the same shard bytes either way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selftok.data.codes import code_sample
from selftok.data.dataset import CAPTIONED, accepted_manifest, decode_png, to_unit
from selftok.data.shard_map import map_shards
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


_loaded: dict[str, Any] = {}  # tokenizer digest -> the tokenizer, once per worker process


def _worker_tokenizer(load: Callable[[], Any], digest: str, threads: int | None) -> Any:
    """The tokenizer of a Dask worker, loaded on its first shard and kept for the next ones."""
    if digest not in _loaded:
        if threads:
            torch.set_num_threads(threads)
        _loaded.clear()
        _loaded[digest] = load()
    return _loaded[digest]


def tokenize_shard(job: ShardJob, batch_size: int, tokenizer: Any) -> list[str]:
    """Encode the accepted samples of one shard; returns the keys written, in order."""
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


def _worker_job(job: ShardJob, load: Callable[[], Any], batch_size: int, threads: int | None) -> list[str]:
    return tokenize_shard(job, batch_size, _worker_tokenizer(load, job.tokenizer_digest, threads))


def run_jobs(
    jobs: Sequence[ShardJob],
    load: Callable[[], Any],
    batch_size: int,
    workers: int,
    on_done: Callable[[ShardJob], None] | None = None,
    address: str | None = None,
) -> tuple[int, int]:
    """Run the jobs not already done; returns (shards encoded, shards skipped).

    One worker and no cluster ``address``: in this process. Otherwise Prefect tasks on a Dask
    cluster: the one at ``address``, or a local one of ``workers`` processes that share this
    machine's torch threads."""
    todo = [job for job in jobs if not job.is_done()]
    skipped = len(jobs) - len(todo)
    if skipped:
        log.info("tokenize: %d of %d shards already done with unchanged inputs; skipping them", skipped, len(jobs))
    if not todo:
        return 0, skipped
    if workers <= 1 and not address:
        tokenizer = load()
        for job in todo:
            tokenize_shard(job, batch_size, tokenizer)
            if on_done:
                on_done(job)
        return len(todo), skipped
    threads = None if address else max(1, torch.get_num_threads() // workers)
    map_shards(partial(_worker_job, load=load, batch_size=batch_size, threads=threads), todo, workers, address,
               on_done=on_done, name="retokenize")
    return len(todo), skipped
