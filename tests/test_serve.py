"""`selftok serve`: a registered champion answers prompts with PNGs and images with captions over
HTTP on 127.0.0.1, bad requests get a 400 that says why, and the server survives them."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image

from selftok import tracking
from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.model import SelftokTokenizer
from selftok.vlm.model import SelftokVLM, build_lm
from selftok.vlm.params import SamplingParams, VLMParams
from selftok.vlm.vocab import VLMTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent / "tokenizer"))  # the tokenizer tests' tiny models
from tokenizer_helpers import tiny_config

STARTUP_S, REQUEST_S = 240, 60


def tiny_champion(project: Path) -> None:
    """The smallest servable champion: a tiny tokenizer + renderer and a tiny VLM over its codes,
    logged through the registration path the stages use, in the project's own store."""
    torch.manual_seed(0)
    tokenizer = SelftokTokenizer(TokenizerConfig(**tiny_config())).eval()
    tokenizer.renderer = tokenizer.new_renderer()
    tokenizer.save_pretrained(project / "models" / "tokenizer")
    tokenizer.save_renderer(project / "models" / "renderer")
    config = tokenizer.config
    vocab = VLMTokenizer.build(["a photo of a red circle", "a photo of two blue squares"] * 8, config.codebook_size,
                               config.num_tokens, text_vocab_size=300)
    vlm = SelftokVLM(build_lm(VLMParams(size="tiny"), vocab, seed=0).eval(), vocab, SamplingParams(caption_max_tokens=4))
    vlm.save_pretrained(project / "models" / "vlm")
    tracking.configure(project, "serve")
    with mlflow.start_run():
        companions = {"tokenizer": project / "models" / "tokenizer", "renderer": project / "models" / "renderer"}
        version = tracking.log_model_dir(project / "models" / "vlm", "selftok-vlm", companions)
    tracking.set_alias("selftok-vlm", tracking.CHAMPION, version)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no answer on {url}/ping within {STARTUP_S} s")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The champion served by `selftok serve`, stopped (its whole process group) whatever happens."""
    project = tmp_path / "project"
    tiny_champion(project)
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the command must find the project's store by itself
    process = subprocess.Popen([sys.executable, "-m", "selftok", "serve", "--root", str(project), "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        yield f"http://127.0.0.1:{port}/invocations"
    except AssertionError:
        log.flush()
        raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
                process.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def png(size: int = 8) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size * 2, size * 3), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_champion_serves_images_and_captions_and_refuses_bad_requests(server: str) -> None:
    status, answer = post(server, json.dumps({"prompt": "a photo of a red circle", "n": 2}).encode())
    assert status == 200, answer
    assert answer["prompt"] == "a photo of a red circle" and len(answer["images"]) == 2
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.format == "PNG" and image.size == (8, 8)

    status, answer = post(server, json.dumps({"inputs": {"image": png()}}).encode())
    assert status == 200, answer
    assert isinstance(answer["predictions"]["caption"], str)

    bad = [
        (b"{not json", "valid JSON"),
        (json.dumps({"prompt": "a photo", "n": 0}).encode(), "n must be a whole number"),
        (json.dumps({"prompt": "", "n": 1}).encode(), "prompt must be non-empty"),
        (json.dumps({"inputs": {"image": "not base64!"}}).encode(), "not valid base64"),
        (json.dumps({"inputs": {"image": base64.b64encode(b"no image").decode()}}).encode(), "does not decode"),
        (json.dumps({"inputs": {"caption": "x"}}).encode(), "exactly one of 'prompt' or 'image'"),
    ]
    for body, message in bad:
        status, answer = post(server, body)
        assert 400 <= status < 500 and message in answer["message"], (body[:40], status, answer)
    status, answer = post(server, json.dumps({"prompt": "a photo of two blue squares"}).encode())
    assert status == 200 and len(answer["images"]) == 1  # still serving after the bad ones
