import pickle
from pathlib import Path

import pytest

from selftok.data.shards import pickle_members, read_samples, write_shards
from selftok.errors import ShardError


def samples(n: int) -> list[dict]:
    return [{"__key__": f"s-{i:03d}", "png": bytes([i]) * 10, "txt": f"caption {i}", "json": b"{}"} for i in range(n)]


def test_round_trip_and_sharding(tmp_path: Path) -> None:
    paths = write_shards(samples(10), tmp_path / "a", shard_size=4)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    back = [s for p in paths for s in read_samples(p)]
    assert [s["__key__"] for s in back] == [f"s-{i:03d}" for i in range(10)]
    assert back[3]["png"] == bytes([3]) * 10 and back[3]["txt"] == b"caption 3"


def test_same_samples_give_identical_bytes(tmp_path: Path) -> None:
    one = write_shards(samples(5), tmp_path / "a", shard_size=10)
    two = write_shards(samples(5), tmp_path / "b", shard_size=10)
    assert one[0].read_bytes() == two[0].read_bytes()


def test_truncated_shard_is_named(tmp_path: Path) -> None:
    (path,) = write_shards(samples(5), tmp_path / "a", shard_size=10)
    path.write_bytes(path.read_bytes()[:700])
    with pytest.raises(ShardError, match=path.name):
        list(read_samples(path))
    with pytest.raises(ShardError, match="not found"):
        list(read_samples(tmp_path / "missing.tar"))


def test_pickle_members_are_reported_not_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = {"__key__": "evil", "png": b"x", "pyd": pickle.dumps({"a": 1}), "txt": b"t"}
    (path,) = write_shards([hostile], tmp_path / "a", shard_size=10)
    monkeypatch.setattr(pickle, "loads", lambda *_: pytest.fail("unpickled"))
    (sample,) = read_samples(path)
    assert pickle_members(sample) == ["pyd"]
    assert isinstance(sample["pyd"], bytes)
