"""The built-in GenEval-style world: coloured shapes on plain backgrounds with exact metadata.

A scene is made in two steps: first a *prompt* is sampled for one of the six GenEval
categories (its structure follows GenEval's evaluation_metadata.jsonl: tag, prompt, include,
exclude), then a scene is composed that satisfies it exactly. Evaluation prompt sets and the
ingested training images therefore come from one definition, and every caption is true of its
image by construction.

Every sample draws from its own generator seeded by (seed, split, index), so a sample does not
depend on how many were made before it, and generation can run in any order or in parallel.
Colour-shape combinations listed in ``holdout`` never appear in the train split; the
image-only ``images`` split draws every pair, so the image models can learn to draw them while
the VLM never reads a caption or a code of one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond")
# Saturated hues far apart, so that anti-aliased edges never look like another named colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 70, 220),
    "purple": (150, 50, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "charcoal": (35, 35, 40),
    "slate": (95, 100, 110),
    "ivory": (225, 222, 210),
}
CATEGORIES: tuple[str, ...] = (
    "single_object",
    "two_objects",
    "counting",
    "colors",
    "position",
    "color_attr",
)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
SPLIT_IDS = {"train": 0, "val": 1, "eval": 2, "images": 3}
SUPERSAMPLE = 4

Split = Literal["train", "val", "eval", "images"]


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels of the final image, x1/y1 exclusive

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2)


@dataclass(frozen=True)
class Scene:
    prompt: dict[str, Any]
    background: str
    objects: list[SceneObject] = field(default_factory=list)
    image_size: int = 32

    @property
    def caption(self) -> str:
        return self.prompt["prompt"]

    def metadata(self) -> dict[str, Any]:
        """Exact description of the image: what the evaluator learns from and scores against."""
        counts: dict[str, int] = {}
        for obj in self.objects:
            counts[obj.shape] = counts.get(obj.shape, 0) + 1
        relations = [
            {"a": i, "b": j, "relation": relation_between(a, b)}
            for i, a in enumerate(self.objects)
            for j, b in enumerate(self.objects)
            if i != j
        ]
        return {
            "category": self.prompt["tag"],
            "image_size": self.image_size,
            "background": self.background,
            "objects": [{"shape": o.shape, "color": o.color, "box": list(o.box)} for o in self.objects],
            "counts": dict(sorted(counts.items())),
            "relations": relations,
            "prompt": self.prompt,
        }


def relation_between(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` lies relative to ``b`` along the dominant axis (image y grows downwards)."""
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = ax - bx, ay - by
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _plural(shape: str) -> str:
    return shape + "es" if shape.endswith("s") else shape + "s"


def make_prompt(
    tag: str,
    shapes: list[str],
    colors: list[str | None] | None = None,
    count: int = 1,
    relation: str | None = None,
) -> dict[str, Any]:
    """A GenEval-style prompt record (tag, prompt, include, exclude) for one category."""
    colors = colors or [None] * len(shapes)

    def phrase(shape: str, color: str | None) -> str:
        words = f"{color} {shape}" if color else shape
        return f"{_article(words)} {words}"

    def item(shape: str, color: str | None, n: int = 1) -> dict[str, Any]:
        entry: dict[str, Any] = {"class": shape, "count": n}
        if color:
            entry["color"] = color
        return entry

    exclude: list[dict[str, Any]] = []
    if tag in ("single_object", "colors"):
        text = f"a photo of {phrase(shapes[0], colors[0])}"
        include = [item(shapes[0], colors[0])]
    elif tag in ("two_objects", "color_attr"):
        text = f"a photo of {phrase(shapes[0], colors[0])} and {phrase(shapes[1], colors[1])}"
        include = [item(shapes[0], colors[0]), item(shapes[1], colors[1])]
    elif tag == "counting":
        text = f"a photo of {NUMBER_WORDS[count]} {_plural(shapes[0])}"
        include = [item(shapes[0], None, count)]
        exclude = [item(shapes[0], None, count + 1)]
    elif tag == "position":
        if relation not in RELATIONS:
            raise ValueError(f"position prompt needs a relation in {RELATIONS}, got {relation!r}")
        # GenEval convention: include[1] stands `relation` of include[0].
        text = f"a photo of {phrase(shapes[0], None)} {relation} {phrase(shapes[1], None)}"
        include = [item(shapes[1], None), {**item(shapes[0], None), "position": [relation, 0]}]
    else:
        raise ValueError(f"unknown prompt category {tag!r}; expected one of {CATEGORIES}")
    return {"tag": tag, "prompt": text, "include": include, "exclude": exclude}


@dataclass(frozen=True)
class SceneConfig:
    """What the generator may draw; mirrors params `data.scenes` plus the image size."""

    image_size: int = 32
    min_objects: int = 1
    max_objects: int = 4
    object_size: tuple[float, float] = (0.3, 0.42)  # side as a fraction of the image
    categories: tuple[str, ...] = CATEGORIES
    holdout: tuple[str, ...] = ()  # "color shape" pairs never drawn in the train split


class SceneGenerator:
    """Samples prompts and composes scenes that satisfy them."""

    def __init__(self, config: SceneConfig, seed: int) -> None:
        unknown = [c for c in config.categories if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown scene categories {unknown}; expected some of {CATEGORIES}")
        for pair in config.holdout:
            color, _, shape = pair.partition(" ")
            if color not in COLORS or shape not in SHAPES:
                raise ValueError(f"holdout pair {pair!r} must be '<colour> <shape>' from {list(COLORS)} x {list(SHAPES)}")
        if not 1 <= config.min_objects <= config.max_objects <= 4:
            raise ValueError("need 1 <= min_objects <= max_objects <= 4")
        self.config = config
        self.seed = seed
        self._holdout = {tuple(p.split(" ", 1)) for p in config.holdout}

    def rng(self, split: Split, index: int) -> random.Random:
        return random.Random(f"{self.seed}/{SPLIT_IDS[split]}/{index}")

    # --- prompts ---------------------------------------------------------------------------
    def _allowed(self, color: str, shape: str, split: Split) -> bool:
        return split != "train" or (color, shape) not in self._holdout

    def _color_for(self, rng: random.Random, shape: str, split: Split, avoid: tuple[str, ...] = ()) -> str:
        options = [c for c in COLORS if c not in avoid and self._allowed(c, shape, split)]
        return rng.choice(options)

    def _feasible_tags(self) -> list[str]:
        lo, hi = self.config.min_objects, self.config.max_objects
        needs = {"single_object": (1, 1), "colors": (1, 1), "two_objects": (2, 2), "position": (2, 2),
                 "color_attr": (2, 2), "counting": (2, 4)}
        tags = [t for t in self.config.categories if needs[t][0] <= hi and needs[t][1] >= lo]
        if not tags:
            raise ValueError("no scene category fits min_objects..max_objects")
        return tags

    def sample_prompt(self, rng: random.Random, split: Split) -> dict[str, Any]:
        tag = rng.choice(self._feasible_tags())
        if tag in ("single_object", "colors"):
            shape = rng.choice(SHAPES)
            color = self._color_for(rng, shape, split) if tag == "colors" else None
            return make_prompt(tag, [shape], [color])
        if tag == "counting":
            lo = max(2, self.config.min_objects)
            count = rng.randint(lo, self.config.max_objects)
            return make_prompt(tag, [rng.choice(SHAPES)], count=count)
        a, b = rng.sample(SHAPES, 2)
        if tag == "color_attr":
            ca = self._color_for(rng, a, split)
            cb = self._color_for(rng, b, split, avoid=(ca,))
            return make_prompt(tag, [a, b], [ca, cb])
        if tag == "position":
            return make_prompt(tag, [a, b], relation=rng.choice(RELATIONS))
        return make_prompt(tag, [a, b])

    # --- composition -----------------------------------------------------------------------
    def compose(self, prompt: dict[str, Any], rng: random.Random, split: Split) -> Scene:
        """Place exactly the objects the prompt names, satisfying its relation if it has one."""
        wanted: list[tuple[str, str | None]] = []
        for entry in prompt["include"]:
            wanted += [(entry["class"], entry.get("color"))] * entry["count"]
        position = next((e["position"] for e in prompt["include"] if "position" in e), None)
        for _ in range(500):
            boxes = self._place(rng, len(wanted))
            if boxes is None:
                continue
            objects = [
                SceneObject(shape, color or self._color_for(rng, shape, split), box)
                for (shape, color), box in zip(wanted, boxes, strict=True)
            ]
            if position is not None:
                relation, ref = position
                subject = objects[len(objects) - 1]
                if not self._clearly(subject, objects[ref], relation):
                    continue
            background = rng.choice(sorted(BACKGROUNDS))
            return Scene(prompt=prompt, background=background, objects=objects, image_size=self.config.image_size)
        raise RuntimeError(f"could not compose a scene for {prompt['prompt']!r}; objects too large for the image?")

    def _place(self, rng: random.Random, n: int) -> list[tuple[int, int, int, int]] | None:
        size = self.config.image_size
        lo, hi = self.config.object_size
        boxes: list[tuple[int, int, int, int]] = []
        for _ in range(n):
            for _ in range(100):
                side = max(4, round(size * rng.uniform(lo, hi)))
                x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
                box = (x0, y0, x0 + side, y0 + side)
                if all(not _overlap(box, other, gap=1) for other in boxes):
                    boxes.append(box)
                    break
            else:
                return None
        return boxes

    @staticmethod
    def _clearly(a: SceneObject, b: SceneObject, relation: str) -> bool:
        """The relation holds along its dominant axis with a margin a judge cannot miss."""
        (ax, ay), (bx, by) = a.center, b.center
        dx, dy = ax - bx, ay - by
        margin = (a.box[2] - a.box[0]) * 0.5
        return relation_between(a, b) == relation and max(abs(dx), abs(dy)) >= margin + abs(min(abs(dx), abs(dy)))

    def scene(self, split: Split, index: int, exclude: frozenset[str] = frozenset()) -> Scene:
        """Scene ``index`` of a split; captions in ``exclude`` (held-out prompts) are redrawn."""
        rng = self.rng(split, index)
        for _ in range(1000):
            prompt = self.sample_prompt(rng, split)
            if prompt["prompt"] not in exclude:
                return self.compose(prompt, rng, split)
        raise RuntimeError(f"every prompt drawn for {split} scene {index} is excluded; is every prompt held out?")

    def scene_for_prompt(self, prompt: dict[str, Any], index: int, split: Split = "eval") -> Scene:
        """A real render of a given prompt (e.g. a held-out evaluation prompt)."""
        return self.compose(prompt, self.rng(split, index), split)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    inner = r * 0.5  # a fat star stays recognisable at low resolution
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else inner
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def render(scene: Scene) -> Image.Image:
    """Draw at 4x and box-downsample, so edges are anti-aliased the same way every time."""
    s = SUPERSAMPLE
    size = scene.image_size * s
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        x0, y0, x1, y1 = (v * s for v in obj.box)
        x1, y1 = x1 - 1, y1 - 1
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
        fill = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            inset = (x1 - x0) * 0.06
            draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
        elif obj.shape == "diamond":
            draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
        elif obj.shape == "star":
            draw.polygon(_star(cx, cy + r * 0.1, r * 1.05), fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    return image.reduce(s)
