"""webdataset shards at rest: writing them reproducibly and reading them without decoding.

Samples are dicts of raw bytes per member extension (``png``, ``txt``, ``json``) plus
``__key__``. Reading never applies webdataset's default decoders, which unpickle ``.pyd`` and
``.pickle`` members: pickled members are reported by name and never loaded.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import webdataset as wds

from selftok.errors import ShardError

log = logging.getLogger(__name__)

SHARD_PATTERN = "shard-%06d.tar"
# Members that are (or may be) pickles: never decoded, the sample is refused.
PICKLE_SUFFIXES = frozenset({"pyd", "pickle", "pkl", "pth", "pt", "ckpt", "joblib"})


def write_shards(samples: Iterable[dict[str, bytes | str]], folder: Path, shard_size: int) -> list[Path]:
    """Write samples to ``folder/shard-%06d.tar``; same samples give byte-identical shards.

    The shards are written in a scratch folder beside ``folder`` and moved in only once all are
    complete, so a failed write (a full disk, a kill) never leaves a truncated shard where a later
    stage reads: ``folder`` keeps its old shards and the scratch folder is removed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        # mtime and owner fixed, members sorted by TarWriter: output depends only on the samples.
        with wds.ShardWriter(str(scratch / SHARD_PATTERN), maxcount=shard_size, verbose=0, encoder=False, mtime=0.0) as sink:
            for sample in samples:
                sink.write({k: v.encode() if isinstance(v, str) and not k.startswith("__") else v for k, v in sample.items()})
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for old in folder.glob("shard-*.tar"):
        old.unlink()
    for new in sorted(scratch.glob("shard-*.tar")):
        new.replace(folder / new.name)
    scratch.rmdir()
    return sorted(folder.glob("shard-*.tar"))


def member_suffix(name: str) -> tuple[str, str]:
    """Split a tar member name into (key, extension) the way webdataset groups samples."""
    base = name.rsplit("/", 1)[-1]
    prefix = name[: len(name) - len(base)]
    key, _, ext = base.partition(".")
    return prefix + key, ext


def read_samples(url: str | Path) -> Iterator[dict[str, bytes | str]]:
    """Raw samples of one shard, in order, as {'__key__', '__url__', ext: bytes}.

    Local paths are read with tarfile (so truncation is reported precisely); other URLs go
    through webdataset's openers (http, s3 via pipe:, gs, ...), still without decoding.
    """
    path = Path(str(url).removeprefix("file://"))
    if path.exists() or ("://" not in str(url) and not str(url).startswith("pipe:")):
        yield from _read_local(path)
        return
    try:
        pipeline = wds.DataPipeline(wds.SimpleShardList([str(url)]), wds.tarfile_to_samples())
        for sample in pipeline:
            yield {k: v for k, v in sample.items() if k != "__local_path__"}
    except Exception as error:
        raise ShardError(f"{url}: cannot read shard: {error}") from error


def _read_local(path: Path) -> Iterator[dict[str, bytes | str]]:
    if not path.is_file():
        raise ShardError(f"{path}: shard not found")
    current: dict[str, bytes | str] | None = None
    try:
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = member_suffix(member.name)
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": str(path)}
                handle = tar.extractfile(member)
                current[ext] = handle.read() if handle else b""
            # tarfile takes a file cut at a member boundary for a complete archive: only the
            # end-of-archive marker (two zero blocks) tells a whole shard from a truncated one
            if path.suffix == ".tar" and path.stat().st_size - tar.offset < 2 * tarfile.BLOCKSIZE:  # uncompressed
                raise ShardError(f"{path}: truncated shard: no end-of-archive marker after {tar.offset} bytes")
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ShardError(f"{path}: corrupt or truncated shard: {error}") from error
    if current is not None:
        yield current


def pickle_members(sample: dict[str, bytes | str]) -> list[str]:
    return sorted(ext for ext in sample if not ext.startswith("__") and ext.rsplit(".", 1)[-1] in PICKLE_SUFFIXES)
