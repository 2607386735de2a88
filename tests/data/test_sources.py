import io
import json
from pathlib import Path

import pytest
from PIL import Image

from selftok.data.params import DataParams, FolderSource
from selftok.data.sources import apply_policy, folder_samples, png_bytes


def make_image(path: Path, size: tuple[int, int], mode: str = "RGB") -> None:
    Image.new(mode, size, 128).save(path)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    make_image(folder / "wide.jpg", (120, 60))
    (folder / "wide.txt").write_text("a wide photo\n")
    make_image(folder / "sub" / "tall.png", (40, 90), mode="L")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "captions.jsonl").write_text(json.dumps({"file": "sub/tall.png", "caption": "a tall one"}) + "\n")
    return folder


def test_folder_source_resizes_captions_and_keeps_corrupt_bytes(photos: Path) -> None:
    params = DataParams(source="folder", image_size=32, folder=FolderSource(path=photos, val_fraction=0.0))
    got = {json.loads(s["json"])["file"]: s for s in folder_samples(params, "train")}
    assert set(got) == {"wide.jpg", "sub/tall.png", "broken.jpg"}
    for name in ("wide.jpg", "sub/tall.png"):
        with Image.open(io.BytesIO(got[name]["png"])) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    assert got["wide.jpg"]["txt"] == "a wide photo"
    assert got["sub/tall.png"]["txt"] == "a tall one"
    assert got["broken.jpg"]["png"] == b"\xff\xd8 not really a jpeg"
    assert "decode_error" in json.loads(got["broken.jpg"]["json"])
    assert got["broken.jpg"]["txt"] == ""
    assert list(folder_samples(params, "val")) == []


def test_split_is_stable_per_file(photos: Path) -> None:
    params = DataParams(source="folder", image_size=32, folder=FolderSource(path=photos, val_fraction=0.5))
    first = {s["__key__"] for s in folder_samples(params, "val")}
    make_image(photos / "new.png", (50, 50))
    assert first <= {s["__key__"] for s in folder_samples(params, "val")}


def test_bad_caption_file_names_the_line(photos: Path) -> None:
    (photos / "captions.jsonl").write_text('{"file": "x"}\n')
    params = DataParams(source="folder", folder=FolderSource(path=photos))
    with pytest.raises(ValueError, match=r"captions.jsonl:1"):
        list(folder_samples(params, "train"))


def test_policy_none_keeps_size_and_mode() -> None:
    data = png_bytes(Image.new("L", (20, 10)))
    out, facts = apply_policy(data, DataParams(resize="none"))
    with Image.open(io.BytesIO(out)) as image:
        assert image.size == (20, 10) and image.mode == "L"
    assert facts == {"original_size": [20, 10], "original_mode": "L"}
