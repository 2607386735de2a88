"""MLflow pyfunc wrapper for every selftok model folder (models-from-code: nothing is pickled).

`mlflow.pyfunc.load_model("models:/selftok-tokenizer@champion")` loads the folder's
safetensors weights through the model class named in its config.json and calls the model's
own ``predict`` on the input.

A VLM version logged with its arm's tokenizer (and renderer) as artifacts is servable on its
own, the way `selftok serve` (`mlflow models serve`) runs it: a request with a prompt and a
count gets PNG images, a request with an image gets a caption (JSON, images base64 PNG):

    {"prompt": "a photo of two red circles", "n": 4}   -> {"prompt": ..., "images": ["iVBOR...", ...]}
    {"inputs": {"image": "iVBOR..."}}                   -> {"predictions": {"caption": "..."}}
    {"dataframe_records": [{"prompt": ...}, {"image": ...}]}   -> one answer per row

A request that is not one of these gets a 400 naming what is wrong; the server keeps running.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import json
import math
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

# config.json "model_type" -> "module:Class" with from_pretrained(folder) and predict(input).
MODEL_CLASSES: dict[str, str] = {
    "selftok-tokenizer": "selftok.tokenizer.model:SelftokTokenizer",
    "selftok-renderer": "selftok.tokenizer.model:SelftokTokenizer",
    "selftok-spatial": "selftok.tokenizer.spatial:SpatialTokenizer",
    "selftok-evaluator": "selftok.eval.evaluator:SceneEvaluator",
    "selftok-vlm": "selftok.vlm.model:SelftokVLM",
}
# Bounds that keep one request from holding the server for long or filling its memory.
MAX_IMAGES, MAX_PROMPT_CHARS, MAX_IMAGE_BYTES, MAX_ROWS = 64, 1000, 16 * 2**20, 64
USAGE = ('send {"prompt": "a photo of two red circles", "n": 4} for PNG images (base64), '
         'or {"inputs": {"image": "<base64 PNG>"}} for a caption')
GENERATION_KEYS, CAPTION_KEYS = frozenset({"prompt", "n", "seed"}), frozenset({"image"})


def load_folder(folder: Path) -> Any:
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in MODEL_CLASSES:
        raise ValueError(f"{folder}/config.json: model_type {kind!r} is not one of {sorted(MODEL_CLASSES)}")
    module, _, name = MODEL_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), name).from_pretrained(folder)


def bad_request(message: str) -> MlflowException:
    """A 400 from the scoring server, with what was wrong and what a request looks like."""
    return MlflowException.invalid_parameter_value(f"bad request: {message}. Usage: {USAGE}")


def _plain(value: Any) -> Any:
    """JSON-like values from what the scoring server parsed (numpy arrays and scalars)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def request_rows(model_input: Any) -> tuple[list[dict[str, Any]], bool]:
    """The requests in whichever envelope arrived, and whether it was a single one (answered
    with one object rather than a list)."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        rows = [{k: _plain(v) for k, v in r.items() if not _missing(v)} for r in model_input.to_dict("records")]
        return rows, False
    if isinstance(model_input, dict):
        row = {str(k): _plain(v) for k, v in model_input.items()}
        if row and all(isinstance(v, list) for v in row.values()):  # column format: {"prompt": [...], "n": [...]}
            if len({len(v) for v in row.values()}) != 1:
                raise bad_request("columns of different lengths")
            return [dict(zip(row, values, strict=True)) for values in zip(*row.values(), strict=True)], False
        return [row], True
    items = _plain(model_input)
    if isinstance(items, list) and all(isinstance(i, dict | str) for i in items):
        return [i if isinstance(i, dict) else {"prompt": i} for i in items], False
    raise bad_request(f"expected an object or a list of objects, got {type(model_input).__name__}")


def _count(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return value


def generation_request(row: dict[str, Any]) -> tuple[str, int, int | None]:
    """(prompt, images, seed or None) of a valid generation request."""
    if unknown := sorted(set(row) - GENERATION_KEYS):
        raise bad_request(f"unknown keys {unknown} beside 'prompt' (allowed: {sorted(GENERATION_KEYS)})")
    prompt = row["prompt"]
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise bad_request(f"prompt must be non-empty text of at most {MAX_PROMPT_CHARS} characters")
    n = _count(row.get("n", 1), "n", 1, MAX_IMAGES)
    seed = None if _missing(row.get("seed")) else _count(row["seed"], "seed", 0, 2**31 - 1)
    return prompt, n, seed


def caption_request(row: dict[str, Any]) -> Any:
    """The RGB PIL image of a valid caption request."""
    from PIL import Image, UnidentifiedImageError

    if unknown := sorted(set(row) - CAPTION_KEYS):
        raise bad_request(f"unknown keys {unknown} beside 'image'")
    value = row["image"]
    if not isinstance(value, str) or len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise bad_request(f"image must be a base64 string of at most {MAX_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (binascii.Error, ValueError) as error:
        raise bad_request(f"image is not valid base64: {error}") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise bad_request(f"image does not decode: {error}") from None


def png_base64(image: Any) -> str:
    """uint8 [3, H, W] tensor -> base64 of its PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class VLMServer:
    """A VLM with the tokenizer its codes belong to: prompts to images, images to captions."""

    def __init__(self, vlm: Any, tokenizer: Any) -> None:
        from selftok.vlm.decode import render_fn

        self.vlm, self.tokenizer, self.render = vlm, tokenizer, render_fn(tokenizer)

    def generate(self, prompt: str, n: int, seed: int | None) -> dict[str, Any]:
        from selftok.data.dataset import to_uint8

        codes = self.vlm.generate([prompt], n, **({} if seed is None else {"seed": seed}))
        return {"prompt": prompt, "images": [png_base64(image) for image in to_uint8(self.render(codes))]}

    def caption(self, image: Any) -> dict[str, Any]:
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        from selftok.data.dataset import to_unit

        size = self.tokenizer.config.image_size
        square = ImageOps.fit(image, (size, size), Image.Resampling.BOX)
        pixels = torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1)[None]
        with torch.no_grad():
            codes = self.tokenizer.encode(to_unit(pixels))
        return {"caption": self.vlm.caption(codes)[0]}

    def answer(self, model_input: Any) -> Any:
        """Validate every request first (a bad one fails the call before any work), then answer them."""
        rows, single = request_rows(model_input)
        if not rows or len(rows) > MAX_ROWS:
            raise bad_request(f"send 1 to {MAX_ROWS} requests, got {len(rows)}")
        for row in rows:
            if ("prompt" in row) == ("image" in row):
                raise bad_request(f"each request needs exactly one of 'prompt' or 'image', got keys {sorted(row)}")
        checked = [("prompt", generation_request(r)) if "prompt" in r else ("image", caption_request(r)) for r in rows]
        answers = [self.generate(*request) if kind == "prompt" else self.caption(request) for kind, request in checked]
        return answers[0] if single else answers


class SelftokPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        self.model = load_folder(Path(context.artifacts["weights"]))
        self.server = None
        if "tokenizer" in context.artifacts:  # a VLM logged with its tokenizer: servable
            from selftok.tokenizer.registry import load_tokenizer

            tokenizer = load_tokenizer(context.artifacts["tokenizer"], renderer=context.artifacts.get("renderer"))
            self.server = VLMServer(self.model, tokenizer)

    def predict(self, context, model_input, params=None):  # untyped: MLflow would infer a signature from hints
        import pandas as pd

        codes = isinstance(model_input, pd.DataFrame) and "codes" in model_input
        if self.server is None or codes:
            return self.model.predict(model_input, **(params or {}))
        return self.server.answer(model_input)


mlflow.models.set_model(SelftokPyfunc())
