"""Re-tokenisation: codes equal a direct encode, finished shards are skipped, bad shards are named."""

import functools
import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from selftok.data.codes import codes_from_bytes
from selftok.data.dataset import ACCEPTED_MANIFEST, to_unit
from selftok.data.retokenize import ShardJob, plan, run_jobs
from selftok.data.scenes import SceneConfig, SceneGenerator, render
from selftok.data.shard_map import task_runner
from selftok.data.shards import read_samples, write_shards
from selftok.errors import ShardError
from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.model import SelftokTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tokenizer"))  # the tokenizer tests' tiny models
from tokenizer_helpers import tiny_config


def tiny_tokenizer() -> SelftokTokenizer:
    torch.manual_seed(0)
    return SelftokTokenizer(TokenizerConfig(**tiny_config())).eval()


def load_tiny(folder: Path) -> SelftokTokenizer:
    return SelftokTokenizer.from_pretrained(folder)


@pytest.fixture
def jobs(tmp_path: Path) -> list[ShardJob]:
    generator = SceneGenerator(SceneConfig(image_size=8, max_objects=2, categories=("single_object", "colors")), seed=0)
    samples = []
    for i in range(12):
        scene = generator.scene("train", i)
        buffer = io.BytesIO()
        render(scene).save(buffer, format="PNG")
        samples.append({"__key__": f"train-{i:07d}", "png": buffer.getvalue(), "txt": scene.caption, "json": "{}"})
    shards = write_shards(samples, tmp_path / "shards", shard_size=4)
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    keys = [tuple(s["__key__"] for s in read_samples(p)) for p in shards]
    return [ShardJob(p, tmp_path / "codes" / p.name, k, "digest") for p, k in zip(shards, keys, strict=True)]


def codes_of(job: ShardJob) -> dict[str, np.ndarray]:
    return {s["__key__"]: codes_from_bytes(s["codes.npy"], s["__key__"]) for s in read_samples(job.target)}


def test_codes_equal_direct_encode_and_resume_skips_done_shards(jobs: list[ShardJob], tmp_path: Path) -> None:
    (tmp_path / "codes").mkdir()
    load = functools.partial(load_tiny, tmp_path / "tok")
    assert run_jobs(jobs, load, batch_size=5, workers=1) == (3, 0)
    model = load()
    for job in jobs:
        images = torch.stack([torch.from_numpy(np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))).permute(2, 0, 1)
                              for s in read_samples(job.source)])
        direct = model.encode(to_unit(images)).numpy()
        got = codes_of(job)
        assert list(got) == list(job.keys)
        assert np.array_equal(np.stack(list(got.values())), direct)
        assert json.loads(job.receipt.read_text())["keys"] == list(job.keys)

    assert run_jobs(jobs, load, batch_size=5, workers=1) == (0, 3)
    changed = [*jobs[:2], ShardJob(jobs[2].source, jobs[2].target, jobs[2].keys[:2], "digest")]
    assert run_jobs(changed, load, batch_size=5, workers=1) == (1, 2)
    assert list(codes_of(changed[2])) == list(jobs[2].keys[:2])


def test_a_two_worker_dask_cluster_writes_the_same_shard_bytes(jobs: list[ShardJob], tmp_path: Path) -> None:
    (tmp_path / "codes").mkdir()
    load = functools.partial(load_tiny, tmp_path / "tok")
    run_jobs(jobs, load, batch_size=5, workers=1)
    single = [j.target.read_bytes() for j in jobs]
    for job in jobs:
        job.receipt.unlink()
        job.target.unlink()
    done: list[ShardJob] = []
    assert run_jobs(jobs, load, batch_size=5, workers=2, on_done=done.append) == (3, 0)  # a local 2-process cluster
    assert done == jobs
    assert [j.target.read_bytes() for j in jobs] == single


def test_the_task_runner_is_a_local_cluster_on_127_0_0_1_or_the_given_one() -> None:
    local = task_runner(3, None)
    assert (local.address, local.cluster_kwargs["n_workers"], local.cluster_kwargs["host"]) == (None, 3, "127.0.0.1")
    remote = task_runner(3, "tcp://10.0.0.5:8786")
    assert (remote.address, remote.cluster_kwargs) == ("tcp://10.0.0.5:8786", {})


def test_truncated_shard_is_named_and_others_kept(jobs: list[ShardJob], tmp_path: Path) -> None:
    (tmp_path / "codes").mkdir()
    load = functools.partial(load_tiny, tmp_path / "tok")
    run_jobs(jobs[:2], load, batch_size=5, workers=1)
    kept = {j.target: j.target.read_bytes() for j in jobs[:2]}
    jobs[2].source.write_bytes(jobs[2].source.read_bytes()[:900])
    with pytest.raises(ShardError, match=jobs[2].source.name):
        run_jobs(jobs, load, batch_size=5, workers=1)
    assert {j.target: j.target.read_bytes() for j in jobs[:2]} == kept
    assert not jobs[2].target.exists()


def test_plan_encodes_the_captioned_splits_only(tmp_path: Path) -> None:
    """The image-only split trains the image models; as codes it would have no reader."""
    rows = [{"key": f"{split}-{i:07d}", "split": split, "shard": f"data/shards/{split}/shard-000000.tar"}
            for split in ("images", "train", "val") for i in range(2)]
    (tmp_path / ACCEPTED_MANIFEST).parent.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / ACCEPTED_MANIFEST, index=False)
    jobs = plan(tmp_path, "digest", Path("codes"))
    assert [job.target.relative_to(tmp_path).as_posix() for job in jobs] == ["codes/train/shard-000000.tar", "codes/val/shard-000000.tar"]
    assert jobs[0].keys == ("train-0000000", "train-0000001")
