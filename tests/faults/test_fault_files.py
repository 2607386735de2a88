"""Full disks and corrupt files: a clear error naming the file, never a half-written output or a silently wrong model."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from selftok.data.shards import read_samples, write_shards
from selftok.errors import CheckpointError, ShardError
from selftok.stages.base import check_model_files, write_atomic
from selftok.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.faults

SAMPLES = [{"__key__": f"{i:04d}", "txt": "x" * 2000, "png": os.urandom(3000)} for i in range(40)]


def limited(code: str, limit_bytes: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a Python process whose files may not grow past ``limit_bytes`` (RLIMIT_FSIZE):
    a write past it fails with EFBIG, as a full disk fails with ENOSPC."""
    prelude = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True)


def test_disk_full_while_writing_shards_keeps_the_old_shards(tmp_path: Path) -> None:
    folder = tmp_path / "shards" / "train"
    old = write_shards(SAMPLES[:10], folder, shard_size=5)
    before = {p.name: p.read_bytes() for p in old}
    code = f"""
        import os, pickle
        from pathlib import Path
        from selftok.data.shards import write_shards
        samples = [{{"__key__": f"{{i:04d}}", "txt": "y" * 2000, "png": os.urandom(3000)}} for i in range(40)]
        write_shards(samples, Path({str(folder)!r}), shard_size=10)
    """
    result = limited(code, 40_000, tmp_path)
    assert result.returncode != 0 and "File too large" in result.stderr, result.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in folder.glob("*")} == before  # the old, complete shards only
    assert not list(folder.parent.glob(".*partial*"))
    for shard in folder.glob("*.tar"):
        assert len(list(read_samples(shard))) == 5


def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path, 1, model.state_dict(), optimizer, {})
    code = f"""
        import torch
        from pathlib import Path
        from selftok.training.checkpoint import save_checkpoint
        model = torch.nn.Linear(512, 512)
        save_checkpoint(Path({str(tmp_path)!r}), 2, model.state_dict(), torch.optim.AdamW(model.parameters()), {{}})
    """
    result = limited(code, 200_000, tmp_path)
    assert result.returncode != 0 and "File too large" in result.stderr, result.stderr[-2000:]
    found = latest_checkpoint(tmp_path)
    assert found is not None and found.name == "step_0000001"
    assert not (tmp_path / "step_0000002").exists()
    step, state, _ = load_checkpoint(found, torch.optim.AdamW(torch.nn.Linear(4, 4).parameters()))
    assert step == 1 and torch.equal(state["weight"], model.state_dict()["weight"])


def test_disk_full_while_writing_metrics_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "metrics" / "stage.json"
    write_atomic(out, json.dumps({"old": 1}))

    def full(self: Path, *_args: object, **_kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(out, json.dumps({"new": 2}))
    monkeypatch.undo()
    assert json.loads(out.read_text()) == {"old": 1} and [p.name for p in out.parent.iterdir()] == ["stage.json"]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
@pytest.mark.parametrize("member", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_a_corrupt_checkpoint_is_named_never_loaded(tmp_path: Path, member: str, damage: str) -> None:
    model = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(model.parameters())
    folder = save_checkpoint(tmp_path, 3, model.state_dict(), optimizer, {})
    file = folder / member
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\xff" * (len(data) // 2))
    with pytest.raises(CheckpointError, match=str(file)):
        load_checkpoint(folder, optimizer)


@pytest.mark.parametrize("damage", ["truncate", "pad", "header"])
def test_a_corrupt_model_file_is_refused_by_name_before_a_stage_loads_it(tmp_path: Path, damage: str) -> None:
    from safetensors.torch import save_file

    folder = tmp_path / "models" / "vae"
    folder.mkdir(parents=True)
    file = folder / "model.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(file))
    check_model_files({"models/vae": folder})  # intact: accepted
    data = file.read_bytes()
    file.write_bytes({"truncate": data[:-100], "pad": data + b"\x00" * 8, "header": b"\xff" * 8 + data[8:]}[damage])
    with pytest.raises(CheckpointError, match=str(file)):
        check_model_files({"models/vae": folder})


def test_a_truncated_code_shard_is_named(tmp_path: Path) -> None:
    (shard,) = write_shards(SAMPLES[:4], tmp_path / "codes", shard_size=10)
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ShardError, match=str(shard)):
        list(read_samples(shard))
