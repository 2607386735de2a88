"""The scene evaluator: a small convolutional detector that parses a scene into objects.

The image is cut into a ``grid x grid`` array of cells; the cell holding an object's centre
predicts it: objectness, shape, colour, centre offset within the cell and box size. Objects
in our scenes never overlap and are at least ~0.3 of the image side, so with the default 4x4
grid no two centres share a cell. Shape and colour are separate heads, so a colour-shape pair
never seen in training (the held-out pairs) is still recognised.

Images enter as uint8 [N, 3, H, W] or float in model space [-1, 1] (what decoders output).
Saved as ``model.safetensors`` + ``config.json``; never pickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from selftok.data.dataset import to_unit
from selftok.data.scenes import COLORS, SHAPES, relation_between

WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
MODEL_TYPE = "selftok-evaluator"
MIN_CELL_SCORE = 0.05  # cells below this never join an object: keeps background noise from adding up


@dataclass(frozen=True)
class EvaluatorConfig:
    image_size: int = 32
    grid: int = 4
    width: int = 16
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    score_threshold: float = 0.5
    nms_radius: float = 0.2  # fraction of the image side

    def __post_init__(self) -> None:
        ratio = self.image_size // self.grid
        if self.image_size % self.grid or ratio & (ratio - 1):
            raise ValueError(f"image_size / grid must be a power of two, got {self.image_size} / {self.grid}")

    @property
    def cell(self) -> float:
        return self.image_size / self.grid

    @property
    def channels(self) -> int:
        """Outputs per cell: objectness, shape logits, colour logits, centre offset (2), size (2)."""
        return 1 + len(self.shapes) + len(self.colors) + 4


@dataclass(frozen=True)
class ParsedObject:
    """One object of a scene, from the evaluator or from exact metadata (score 1)."""

    shape: str
    color: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    score: float = 1.0

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


def objects_from_metadata(metadata: dict[str, Any]) -> list[ParsedObject]:
    return [ParsedObject(o["shape"], o["color"], tuple(float(v) for v in o["box"])) for o in metadata["objects"]]


def as_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1]; float images are taken as already in [-1, 1] and clamped."""
    if images.dtype == torch.uint8:
        return to_unit(images)
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or float, got {images.dtype}")
    return images.float().clamp(-1.0, 1.0)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@dataclass
class _Split:
    objectness: torch.Tensor  # [N, G, G] logits
    shape: torch.Tensor  # [N, G, G, S]
    color: torch.Tensor  # [N, G, G, C]
    offset: torch.Tensor  # [N, G, G, 2] in [0, 1] of a cell
    size: torch.Tensor  # [N, G, G, 2] in [0, 1] of the image side


class SceneEvaluator(nn.Module):
    def __init__(self, config: EvaluatorConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        layers: list[nn.Module] = [_conv(3, w)]
        channels = w
        for _ in range(int(math.log2(config.image_size // config.grid))):
            out = min(channels * 2, 8 * w)
            layers += [_conv(channels, out, stride=2), _conv(out, out)]
            channels = out
        layers.append(_conv(channels, channels))  # context across neighbouring cells at grid resolution
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, config.channels, 1)
        self.feature_dim = channels

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space images [N, 3, H, W] -> raw per-cell outputs [N, G, G, channels]."""
        return self.head(self.backbone(x)).permute(0, 2, 3, 1)

    def split(self, raw: torch.Tensor) -> _Split:
        s, c = len(self.config.shapes), len(self.config.colors)
        return _Split(
            objectness=raw[..., 0],
            shape=raw[..., 1 : 1 + s],
            color=raw[..., 1 + s : 1 + s + c],
            offset=raw[..., 1 + s + c : 3 + s + c].sigmoid(),
            size=raw[..., 3 + s + c : 5 + s + c].sigmoid(),
        )

    def _check_size(self, images: torch.Tensor) -> None:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise ValueError(f"evaluator expects images [N, 3, {size}, {size}], got {list(images.shape)}")

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Pooled backbone features [N, feature_dim]: the space of the Frechet evaluator distance."""
        self._check_size(images)
        self.eval()
        out = [
            self.backbone(as_model_input(images[i : i + batch_size]).to(self.device)).mean(dim=(2, 3)).cpu()
            for i in range(0, len(images), batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.feature_dim)

    @torch.no_grad()
    def parse(self, images: torch.Tensor, batch_size: int = 512) -> list[list[ParsedObject]]:
        """The objects of each image, strongest first."""
        self._check_size(images)
        self.eval()
        parsed: list[list[ParsedObject]] = []
        for i in range(0, len(images), batch_size):
            raw = self(as_model_input(images[i : i + batch_size]).to(self.device)).float().cpu()
            parsed += self.decode(raw)
        return parsed

    def decode(self, raw: torch.Tensor) -> list[list[ParsedObject]]:
        """Per-cell outputs -> objects. An object whose centre lies on a cell border splits its
        objectness between the cells (each may stay under the threshold), so cells predicting
        centres within ``nms_radius`` of a stronger cell are one object: their scores add up,
        and the strongest cell gives shape, colour and box."""
        cfg = self.config
        out = self.split(raw)
        scores = out.objectness.sigmoid()
        shape_idx, color_idx = out.shape.argmax(-1), out.color.argmax(-1)
        gy, gx = torch.meshgrid(torch.arange(cfg.grid), torch.arange(cfg.grid), indexing="ij")
        cx = (gx + out.offset[..., 0]) * cfg.cell
        cy = (gy + out.offset[..., 1]) * cfg.cell
        half_w, half_h = out.size[..., 0] * cfg.image_size / 2, out.size[..., 1] * cfg.image_size / 2
        radius = cfg.nms_radius * cfg.image_size
        results: list[list[ParsedObject]] = []
        for n in range(raw.shape[0]):
            clusters: list[tuple[tuple[float, float], int, int, float]] = []  # centre, y, x, summed score
            cells = (scores[n] > MIN_CELL_SCORE).nonzero().tolist()
            for y, x in sorted(cells, key=lambda c: -float(scores[n, c[0], c[1]])):
                centre, score = (float(cx[n, y, x]), float(cy[n, y, x])), float(scores[n, y, x])
                near = next((i for i, c in enumerate(clusters) if math.dist(centre, c[0]) < radius), None)
                if near is None:
                    clusters.append((centre, y, x, score))
                else:
                    clusters[near] = (*clusters[near][:3], clusters[near][3] + score)
            objects = []
            for (ox, oy), y, x, total in clusters:
                if total <= cfg.score_threshold:
                    continue
                hw, hh = float(half_w[n, y, x]), float(half_h[n, y, x])
                objects.append(
                    ParsedObject(
                        shape=cfg.shapes[int(shape_idx[n, y, x])],
                        color=cfg.colors[int(color_idx[n, y, x])],
                        box=(ox - hw, oy - hh, ox + hw, oy + hh),
                        score=min(total, 1.0),
                    )
                )
            results.append(objects)
        return results

    def predict(self, images: Any) -> list[list[dict[str, Any]]]:
        """Parse uint8 images given as [N, H, W, 3] or [N, 3, H, W] arrays (the MLflow pyfunc
        entry point): one list of {shape, color, box, score} per image."""
        tensor = torch.as_tensor(np.asarray(images))
        if tensor.ndim == 4 and tensor.shape[-1] == 3 and tensor.shape[1] != 3:
            tensor = tensor.permute(0, 3, 1, 2)
        return [[asdict(o) for o in objects] for objects in self.parse(tensor.contiguous())]

    # --- persistence ---------------------------------------------------------------------
    def save(self, folder: Path, extra_config: dict[str, Any] | None = None) -> None:
        """Weights as safetensors and config.json (architecture, decoding and ``extra_config``)."""
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE))
        config = {"model_type": MODEL_TYPE, "model": asdict(self.config), **(extra_config or {})}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path | str, device: torch.device | str = "cpu") -> SceneEvaluator:
        folder = Path(folder)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: not found; run `dvc repro train_evaluator` first")
        data = json.loads((folder / CONFIG_FILE).read_text())
        if data.get("model_type") != MODEL_TYPE:
            raise ValueError(f"{folder / CONFIG_FILE}: not a scene evaluator (model_type {data.get('model_type')!r})")
        config = EvaluatorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data["model"].items()})
        model = cls(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        return model.to(device).eval()

    from_pretrained = load  # the name selftok.mlflow_model loads every model folder by


def targets_for(metadata: list[dict[str, Any]], config: EvaluatorConfig) -> torch.Tensor:
    """Training targets [N, G, G, 7]: present, shape index, colour index, offset x/y, size w/h."""
    shape_index = {s: i for i, s in enumerate(config.shapes)}
    color_index = {c: i for i, c in enumerate(config.colors)}
    target = torch.zeros(len(metadata), config.grid, config.grid, 7)
    for n, meta in enumerate(metadata):
        if "objects" not in meta:
            raise ValueError("the scene evaluator trains on samples with object metadata (data.source: scenes)")
        for obj in objects_from_metadata(meta):
            cx, cy = obj.center
            gx = min(int(cx / config.cell), config.grid - 1)
            gy = min(int(cy / config.cell), config.grid - 1)
            w, h = obj.box[2] - obj.box[0], obj.box[3] - obj.box[1]
            target[n, gy, gx] = torch.tensor(
                [
                    1.0,
                    shape_index[obj.shape],
                    color_index[obj.color],
                    cx / config.cell - gx,
                    cy / config.cell - gy,
                    w / config.image_size,
                    h / config.image_size,
                ]
            )
    return target


def detection_loss(model: SceneEvaluator, raw: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    out = model.split(raw)
    present = target[..., 0] > 0.5
    losses = {"objectness": F.binary_cross_entropy_with_logits(out.objectness, target[..., 0])}
    if present.any():
        losses["shape"] = F.cross_entropy(out.shape[present], target[..., 1][present].long())
        losses["color"] = F.cross_entropy(out.color[present], target[..., 2][present].long())
        box = torch.cat([out.offset, out.size * model.config.grid], -1)[present]
        wanted = torch.cat([target[..., 3:5], target[..., 5:7] * model.config.grid], -1)[present]
        losses["box"] = F.smooth_l1_loss(box, wanted, beta=0.1)
    losses["total"] = sum(losses.values())
    return losses


# --- comparing parses -------------------------------------------------------------------------
def match(a: list[ParsedObject], b: list[ParsedObject], max_distance: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of objects of ``a`` and ``b`` whose centres lie within ``max_distance``,
    nearest first; each object is used once. Scene objects are far apart, so greedy is optimal."""
    pairs = sorted((math.dist(x.center, y.center), i, j) for i, x in enumerate(a) for j, y in enumerate(b))
    used_a: set[int] = set()
    used_b: set[int] = set()
    matched: list[tuple[int, int]] = []
    for distance, i, j in pairs:
        if distance <= max_distance and i not in used_a and j not in used_b:
            matched.append((i, j))
            used_a.add(i)
            used_b.add(j)
    return matched


def compare(truth: list[ParsedObject], parsed: list[ParsedObject], max_distance: float) -> dict[str, float]:
    """How well a parse describes a scene: per-object attribute hits, pairwise relations, and
    whether the whole scene is right (same number of objects, each in place with right shape
    and colour). Object-level entries are counts over ``truth`` objects so callers can pool."""
    pairs = match(truth, parsed, max_distance)
    partner = dict(pairs)
    relations_total = relations_hit = 0
    for i, a in enumerate(truth):
        for j, b in enumerate(truth):
            if i == j:
                continue
            relations_total += 1
            if i in partner and j in partner:
                relations_hit += relation_between(parsed[partner[i]], parsed[partner[j]]) == relation_between(a, b)
    shape_hits = sum(truth[i].shape == parsed[j].shape for i, j in pairs)
    color_hits = sum(truth[i].color == parsed[j].color for i, j in pairs)
    scene = len(truth) == len(parsed) == len(pairs) and shape_hits == color_hits == len(pairs)
    return {
        "objects": len(truth),
        "located": len(pairs),
        "shape": shape_hits,
        "color": color_hits,
        "relations": relations_total,
        "relations_hit": relations_hit,
        "count": float(len(truth) == len(parsed)),
        "scene": float(scene),
    }


def accuracy(truths: list[list[ParsedObject]], parses: list[list[ParsedObject]], max_distance: float) -> dict[str, float]:
    """Scene- and attribute-level accuracy of parses against exact objects."""
    if len(truths) != len(parses) or not truths:
        raise ValueError(f"need as many parses as scenes (>0), got {len(parses)} and {len(truths)}")
    rows = [compare(t, p, max_distance) for t, p in zip(truths, parses, strict=True)]
    total = {k: sum(r[k] for r in rows) for k in rows[0]}
    objects = max(total["objects"], 1)
    return {
        "scene_accuracy": total["scene"] / len(rows),
        "count_accuracy": total["count"] / len(rows),
        "position_accuracy": total["located"] / objects,
        "shape_accuracy": total["shape"] / objects,
        "color_accuracy": total["color"] / objects,
        "relation_accuracy": total["relations_hit"] / max(total["relations"], 1),
    }


def pair_accuracy(
    truths: list[list[ParsedObject]], parses: list[list[ParsedObject]], max_distance: float, pairs: set[tuple[str, str]]
) -> float | None:
    """Share of objects of the given (colour, shape) pairs found in place with both right;
    None when no such object occurs. Measures the held-out pairs the train split never shows."""
    hits = total = 0
    for truth, parsed in zip(truths, parses, strict=True):
        partner = dict(match(truth, parsed, max_distance))
        for i, obj in enumerate(truth):
            if (obj.color, obj.shape) in pairs:
                total += 1
                found = parsed[partner[i]] if i in partner else None
                hits += found is not None and (found.color, found.shape) == (obj.color, obj.shape)
    return hits / total if total else None
