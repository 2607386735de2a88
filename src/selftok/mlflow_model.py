"""MLflow pyfunc wrapper for every selftok model folder (models-from-code: nothing is pickled).

`mlflow.pyfunc.load_model("models:/selftok-tokenizer@champion")` loads the folder's
safetensors weights through the model class named in its config.json and calls the model's
own ``predict`` on the input.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

# config.json "model_type" -> "module:Class" with from_pretrained(folder) and predict(input).
MODEL_CLASSES: dict[str, str] = {
    "selftok-tokenizer": "selftok.tokenizer.model:SelftokTokenizer",
    "selftok-renderer": "selftok.tokenizer.model:SelftokTokenizer",
    "selftok-spatial": "selftok.tokenizer.spatial:SpatialTokenizer",
    "selftok-evaluator": "selftok.eval.evaluator:SceneEvaluator",
    "selftok-vlm": "selftok.vlm.model:SelftokVLM",
}


def load_folder(folder: Path) -> Any:
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in MODEL_CLASSES:
        raise ValueError(f"{folder}/config.json: model_type {kind!r} is not one of {sorted(MODEL_CLASSES)}")
    module, _, name = MODEL_CLASSES[kind].partition(":")
    return getattr(importlib.import_module(module), name).from_pretrained(folder)


class SelftokPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        self.model = load_folder(Path(context.artifacts["weights"]))

    def predict(self, context, model_input, params=None):  # untyped: MLflow would infer a signature from hints
        return self.model.predict(model_input, **(params or {}))


mlflow.models.set_model(SelftokPyfunc())
