"""GenEval-style benchmark on the scene world: prompt sets, rule checks, scores and RL rewards.

Prompt records have GenEval's evaluation_metadata.jsonl structure (tag, prompt, include
[{class, count, color?, position?}], exclude) and are judged by GenEval's rules on the objects
the scene evaluator finds: each included class must appear ``count`` times, the first
``count`` objects of the class must have the colour asked for, positioned objects must stand
in the asked relation to every object of the referenced group (GenEval's relative_position
with its 0.1 size margin), and excluded classes must appear fewer than ``count`` times.
One deliberate difference: GenEval takes the most confident objects of a class before checking
colour; we take objects of the asked colour first, so a correct object is never hidden behind
a wrong one that the evaluator happens to score higher.

The score is the mean over categories of the share of correct images (GenEval's overall).
The RL reward gives partial credit: the mean of the sub-checks (present, count, colour,
position), which is 1 exactly when the image is correct.

Like GenEval, the rules ignore objects nobody asked for: "a photo of a circle" passes with four
shapes drawn, one of them a circle. RL finds this (docs/experiments.md, "RL recipes and reward
hacking"), so every judgement also counts the ``extra`` objects, the benchmark reports their
mean, and the RL reward can take a sub-check against them (``Judgement.shaped_reward``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from selftok.data.params import DataParams
from selftok.data.scenes import CATEGORIES, COLORS, RELATIONS, SHAPES, SceneConfig, SceneGenerator, make_prompt, render
from selftok.eval.evaluator import ParsedObject, SceneEvaluator, objects_from_metadata
from selftok.eval.params import GenevalParams

POSITION_THRESHOLD = 0.1  # GenEval: offsets shrink by this share of the summed object sizes
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PROMPT_SETS = ("rl_train", "rl_select", "rl_test", "compositional")
BENCHMARK_SETS = ("rl_test", "compositional")  # what the evaluate stage scores, the paper's protocol first
TEST_PROMPTS = 16  # rl_test prompts per category, where the world leaves RL as many groups as the test

Record = dict[str, Any]


# --- prompt sets ----------------------------------------------------------------------------
def prompt_groups(config: SceneConfig) -> dict[str, list[list[Record]]]:
    """Every prompt of each category, grouped so that wordings of one request (``a and b`` /
    ``b and a``; ``a left of b`` / ``b right of a``) always land in the same prompt set."""
    pairs = [(a, b) for i, a in enumerate(SHAPES) for b in SHAPES[i + 1 :]]
    colour_pairs = [(x, y) for x in COLORS for y in COLORS if x != y]
    groups: dict[str, list[list[Record]]] = {
        "single_object": [[make_prompt("single_object", [s])] for s in SHAPES],
        "two_objects": [[make_prompt("two_objects", [a, b]), make_prompt("two_objects", [b, a])] for a, b in pairs],
        "counting": [[make_prompt("counting", [s], count=n)] for s in SHAPES for n in range(2, config.max_objects + 1)],
        "colors": [[make_prompt("colors", [s], [c])] for c in COLORS for s in SHAPES],
        "position": [
            [make_prompt("position", [a, b], relation=r), make_prompt("position", [b, a], relation=INVERSE[r])]
            for a, b in pairs
            for r in RELATIONS
        ],
        "color_attr": [
            [make_prompt("color_attr", [a, b], [x, y]), make_prompt("color_attr", [b, a], [y, x])]
            for a, b in pairs
            for x, y in colour_pairs
        ],
    }
    return {tag: groups[tag] for tag in config.categories if groups[tag]}


def _uses_holdout(group: list[Record], holdout: set[tuple[str, str]]) -> bool:
    return any((item.get("color"), item["class"]) in holdout for record in group for item in record["include"])


def allot(groups: list[list[Record]], select_fraction: float) -> tuple[list[list[Record]], list[list[Record]], list[list[Record]]]:
    """One category's captionable groups as (rl_test, rl_select, rl_train): rl_test takes groups
    until it holds TEST_PROMPTS prompts or half the groups (at least one), rl_select
    ``select_fraction`` of the rest (at least one where two are left), rl_train the others."""
    n_test, prompts = 0, 0
    while n_test < min(len(groups), max(1, len(groups) // 2)) and prompts < TEST_PROMPTS:
        prompts += len(groups[n_test])
        n_test += 1
    rest = groups[n_test:]
    n_select = min(max(1, round(select_fraction * len(rest))), len(rest) - 1) if select_fraction > 0 and len(rest) >= 2 else 0
    return groups[:n_test], rest[:n_select], rest[n_select:]


def build_prompt_sets(config: SceneConfig, seed: int, params: GenevalParams) -> dict[str, list[Record]]:
    """The four prompt sets (PROMPT_SETS), deterministic in ``seed`` and disjoint as strings and as
    request groups. ``compositional`` holds every prompt naming a held-out colour-shape pair (never
    drawn in the train split) and ``heldout_fraction`` of the other groups: no training image is
    captioned with them. The rest may caption training images, and is cut into ``rl_test`` (the
    paper's protocol: requests the VLM saw as captions, never used by RL), ``rl_select``
    (checkpoint choice) and ``rl_train`` (RL updates)."""
    holdout = {tuple(pair.split(" ", 1)) for pair in config.holdout}
    sets: dict[str, list[Record]] = {name: [] for name in PROMPT_SETS}
    for tag, groups in prompt_groups(config).items():
        rng = random.Random(f"{seed}/prompts/{tag}")
        groups = list(groups)
        rng.shuffle(groups)
        forced = [g for g in groups if _uses_holdout(g, holdout)]
        free = [g for g in groups if not _uses_holdout(g, holdout)]
        k = round(params.heldout_fraction * len(free))
        if len(free) >= 2:
            k = min(max(k, 0 if forced else 1), len(free) - 1)
        compositional = [r for g in forced + free[:k] for r in g]
        rng.shuffle(compositional)
        sets["compositional"] += compositional[: params.max_heldout_per_category]
        test, select, train = allot(free[k:], params.select_fraction)
        sets["rl_test"] += [r for g in test for r in g]
        sets["rl_select"] += [r for g in select for r in g]
        sets["rl_train"] += [r for g in train for r in g][: params.max_train_per_category]
    return sets


def held_out_pairs(records: Sequence[Record], holdout: Iterable[str]) -> list[Record]:
    """The records naming a held-out colour-shape pair: ``compositional``'s hardest part, scored apart."""
    pairs = {tuple(pair.split(" ", 1)) for pair in holdout}
    return [r for r in records if _uses_holdout([r], pairs)]


def scene_config(data: DataParams) -> SceneConfig:
    """The scene world of a ``data`` section (image size, object counts, categories, holdout)."""
    scenes = data.scenes
    return SceneConfig(
        image_size=data.image_size,
        min_objects=scenes.min_objects,
        max_objects=scenes.max_objects,
        object_size=scenes.object_size,
        categories=tuple(scenes.categories),
        holdout=tuple(scenes.holdout),
    )


def prompt_sets(data: DataParams, seed: int, params: GenevalParams) -> dict[str, list[Record]]:
    """The prompt sets of a params file (its ``data``, ``seed`` and ``geneval``): one definition
    shared by ingest (compositional prompts never caption a training image), VLM scoring, RL and
    evaluation."""
    return build_prompt_sets(scene_config(data), seed, params)


def per_category(records: Sequence[Record], limit: int) -> list[Record]:
    """At most ``limit`` records of each category, in the set's order."""
    taken: dict[str, int] = {}
    out = []
    for r in records:
        if taken.get(r["tag"], 0) < limit:
            taken[r["tag"]] = taken.get(r["tag"], 0) + 1
            out.append(r)
    return out


def limited_sets(data: DataParams, seed: int, params: GenevalParams, limit: int,
                 names: Sequence[str] = BENCHMARK_SETS) -> dict[str, list[Record]]:
    """The prompt sets ``names`` (the benchmark's by default), at most ``limit`` prompts per category each."""
    sets = prompt_sets(data, seed, params)
    return {name: per_category(sets[name], limit) for name in names}


def relative_position(a: ParsedObject, b: ParsedObject) -> set[str]:
    """GenEval's relations of ``a`` to ``b``: centre offset shrunk by a margin of the sizes,
    then every axis carrying over half of the (unshrunk) direction counts."""
    (ax, ay), (bx, by) = a.center, b.center
    offset = (ax - bx, ay - by)
    dims = (
        (a.box[2] - a.box[0]) + (b.box[2] - b.box[0]),
        (a.box[3] - a.box[1]) + (b.box[3] - b.box[1]),
    )
    revised = [max(abs(o) - POSITION_THRESHOLD * d, 0.0) * math.copysign(1.0, o) for o, d in zip(offset, dims, strict=True)]
    norm = math.hypot(*offset)
    if all(abs(r) < 1e-3 for r in revised) or norm == 0:
        return set()
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


@dataclass
class Judgement:
    """GenEval's verdict on one image plus the sub-check scores the RL reward averages."""

    correct: bool
    checks: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    asked: int = 0  # objects the prompt asks for
    extra: int = 0  # objects found beyond those (the rules do not look at them)

    @property
    def reward(self) -> float:
        return self.shaped_reward(penalize_extra=False)

    def shaped_reward(self, penalize_extra: bool) -> float:
        """Mean of the sub-checks; with ``penalize_extra`` one more, asked / (asked + extra), so
        that drawing objects nobody asked for costs reward even where the rules ignore them."""
        checks = list(self.checks.values())
        if penalize_extra:
            checks.append(self.asked / (self.asked + self.extra) if self.asked else float(self.extra == 0))
        return sum(checks) / len(checks) if checks else float(self.correct)


def judge(record: Record, objects: Sequence[ParsedObject]) -> Judgement:
    """Check one prompt record against the objects found in an image."""
    by_class: dict[str, list[ParsedObject]] = {}
    for obj in sorted(objects, key=lambda o: -o.score):
        by_class.setdefault(obj.shape, []).append(obj)
    limits = {ex["class"]: ex["count"] for ex in record.get("exclude", [])}
    asked = sum(req["count"] for req in record.get("include", []))
    result = Judgement(correct=True, asked=asked, extra=max(0, len(objects) - asked))
    groups: list[list[ParsedObject] | None] = []

    def fail(reason: str) -> None:
        result.correct = False
        result.reasons.append(reason)

    for i, req in enumerate(record.get("include", [])):
        cls, want, colour = req["class"], req["count"], req.get("color")
        candidates = by_class.get(cls, [])
        if colour:
            candidates = sorted(candidates, key=lambda o: o.color != colour)  # stable: keeps score order
        found = candidates[:want]
        n = len(candidates)
        matched = n >= want
        result.checks[f"{i}.present"] = float(n > 0)
        count_score = min(n, want) / want
        if cls in limits and n >= limits[cls]:
            count_score *= (limits[cls] - 1) / n
        result.checks[f"{i}.count"] = count_score
        if not matched:
            fail(f"expected {cls}>={want}, found {n}")
        if colour:
            hits = sum(o.color == colour for o in candidates)
            result.checks[f"{i}.color"] = min(hits, want) / want
            if matched and hits < want:
                matched = False
                fail(f"expected {colour} {cls}>={want}, found {hits}")
        if "position" in req:
            relation, ref = req["position"]
            target = groups[ref] if ref < len(groups) else None
            pairs = [(o, t) for o in found for t in target or []]
            hits = sum(relation in relative_position(o, t) for o, t in pairs)
            result.checks[f"{i}.position"] = hits / len(pairs) if pairs else 0.0
            if matched and (not pairs or hits < len(pairs)):
                matched = False
                fail(f"expected {cls} {relation} target {ref}")
        groups.append(found if matched else None)
    included = {req["class"] for req in record.get("include", [])}
    for cls, limit in limits.items():
        n = len(by_class.get(cls, []))
        if cls not in included:
            result.checks[f"exclude.{cls}"] = 1.0 if n < limit else (limit - 1) / n
        if n >= limit:
            fail(f"expected {cls}<{limit}, found {n}")
    return result


# --- scoring with the evaluator ------------------------------------------------------------
def judge_images(records: Sequence[Record], images: torch.Tensor, evaluator: SceneEvaluator) -> list[Judgement]:
    if len(records) != len(images):
        raise ValueError(f"need one prompt record per image, got {len(records)} records and {len(images)} images")
    return [judge(r, objs) for r, objs in zip(records, evaluator.parse(images), strict=True)]


def reward(records: Sequence[Record], images: torch.Tensor, evaluator: SceneEvaluator) -> torch.Tensor:
    """RL reward in [0, 1] per image: the evaluator parses the whole batch at once, then the
    mean of each prompt's sub-checks (object present, count, colour, position)."""
    return torch.tensor([j.reward for j in judge_images(records, images, evaluator)], dtype=torch.float32)


def summarize(records: Sequence[Record], correct: Iterable[bool]) -> dict[str, Any]:
    """GenEval's summary: share correct per category, overall = mean over categories, and
    ``overall_se``, the standard error of overall from sampling alone (``sampling_se``)."""
    per_prompt: dict[tuple[str, str], list[bool]] = {}
    for record, ok in zip(records, correct, strict=True):  # records without a prompt count as one prompt
        per_prompt.setdefault((record["tag"], record.get("prompt", "")), []).append(bool(ok))
    by_tag: dict[str, list[list[bool]]] = {}
    for (tag, _), hits in per_prompt.items():
        by_tag.setdefault(tag, []).append(hits)
    scored = {tag: by_tag[tag] for tag in CATEGORIES if tag in by_tag}
    per_category = {tag: sum(map(sum, groups)) / sum(map(len, groups)) for tag, groups in scored.items()}
    return {
        "overall": sum(per_category.values()) / len(per_category) if per_category else 0.0,
        "overall_se": sampling_se(list(scored.values())),
        **per_category,
        "images": {tag: sum(map(len, groups)) for tag, groups in by_tag.items()},
    }


def sampling_se(categories: Sequence[Sequence[Sequence[bool]]]) -> float:
    """How far the mean of category shares would move if the same prompts were drawn again with
    other seeds (``categories``: per category, per prompt, whether each image was right).

    Each prompt's images are independent draws with its own success rate p, so a category's
    share has variance sum_i m_i p_i (1 - p_i) / n^2 over its prompts (m_i images each, n in all),
    estimated with the unbiased m_i / (m_i - 1) correction, and overall averages the categories.
    The held-out set is small (two single_object prompts), so this is about 2 points at 16
    images per prompt, and two such scores must differ by about 5 points (two standard errors of
    the difference) before the difference stands out of the noise (docs/experiments.md, How to compare)."""
    variance = 0.0
    for groups in categories:
        n = sum(len(hits) for hits in groups)
        for hits in groups:
            p = sum(hits) / len(hits)
            variance += len(hits) ** 2 * p * (1 - p) / max(len(hits) - 1, 1) / n**2
    return math.sqrt(variance) / len(categories) if categories else 0.0


def summarize_judged(rows: Sequence[Record], judged: Sequence[Judgement]) -> dict[str, Any]:
    """``summarize`` plus what the rules let pass: the mean number of objects drawn beyond those
    asked for (``extra_objects``) and the overall score of images correct with none (``overall_strict``,
    with its ``overall_strict_se``)."""
    summary = summarize(rows, (j.correct for j in judged))
    summary["extra_objects"] = sum(j.extra for j in judged) / len(judged) if judged else 0.0
    strict = summarize(rows, (j.correct and not j.extra for j in judged))
    summary["overall_strict"], summary["overall_strict_se"] = strict["overall"], strict["overall_se"]
    return summary


def score(records: Sequence[Record], images: torch.Tensor, evaluator: SceneEvaluator) -> dict[str, Any]:
    return summarize(records, (j.correct for j in judge_images(records, images, evaluator)))


def table(summary: dict[str, Any]) -> str:
    """The per-category table of a summary, as Markdown."""
    lines = ["| category | images | accuracy |", "|---|---|---|"]
    for tag in CATEGORIES:
        if tag in summary:
            lines.append(f"| {tag} | {summary['images'][tag]} | {summary[tag]:.3f} |")
    lines.append(f"| **overall** | {sum(summary['images'].values())} | {summary['overall']:.3f} |")
    return "\n".join(lines)


# --- sanity checks -------------------------------------------------------------------------
def real_renders(data: DataParams, records: Sequence[Record], per_prompt: int) -> torch.Tensor:
    """uint8 real renders of prompts from the scene world of ``data``, ``per_prompt`` each
    (prompt-major): the data a model's images of the same prompts are compared with."""
    generator = SceneGenerator(scene_config(data), data.scenes.seed)
    return render_prompts(records, generator, per_prompt)[1]


def render_prompts(
    records: Sequence[Record], generator: SceneGenerator, samples_per_prompt: int
) -> tuple[list[Record], torch.Tensor, list[list[ParsedObject]]]:
    """Real renders of prompts (``samples_per_prompt`` each): records, uint8 images, exact objects."""
    rows, images, truths = [], [], []
    for i, record in enumerate(records):
        for s in range(samples_per_prompt):
            scene = generator.scene_for_prompt(record, index=i * samples_per_prompt + s)
            rows.append(record)
            images.append(np.asarray(render(scene)))
            truths.append(objects_from_metadata(scene.metadata()))
    return rows, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), truths


def sanity_metrics(
    evaluator: SceneEvaluator,
    heldout: Sequence[Record],
    generator: SceneGenerator,
    samples_per_prompt: int,
    pairs: int,
    seed: int,
) -> dict[str, Any]:
    """Does the benchmark measure what it claims? Real renders of held-out prompts should score
    near 1; pure noise and renders paired with another prompt should score near chance (the
    score exact objects get on the same shuffled pairs); the reward should prefer the matching
    image of a prompt to a mismatched one."""
    rows, images, truths = render_prompts(heldout, generator, samples_per_prompt)
    judged = judge_images(rows, images, evaluator)
    renders = summarize(rows, (j.correct for j in judged))
    rng = random.Random(f"{seed}/sanity")
    picks = [rng.randrange(len(rows)) for _ in range(pairs)]
    # each picked image is paired with a prompt of another request (its shuffled partner)
    partners = [(p + 1 + rng.randrange(len(rows) - 1)) % len(rows) for p in picks]
    swapped = [rows[q] for q in partners]
    keep = [k for k, (p, q) in enumerate(zip(picks, partners, strict=True)) if rows[p]["prompt"] != rows[q]["prompt"]]
    picks, swapped = [picks[k] for k in keep], [swapped[k] for k in keep]
    parsed = evaluator.parse(images[picks])
    shuffled = summarize(swapped, (judge(r, o).correct for r, o in zip(swapped, parsed, strict=True)))
    oracle = summarize(swapped, (judge(r, truths[p]).correct for r, p in zip(swapped, picks, strict=True)))
    noise_images = torch.randint(
        0, 256, (len(picks), *images.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )
    noise = score(swapped, noise_images, evaluator)
    matched_reward = torch.tensor([judged[p].reward for p in picks])
    mismatched_reward = torch.tensor([judge(r, o).reward for r, o in zip(swapped, parsed, strict=True)])
    return {
        "heldout_render_overall": renders["overall"],
        "heldout_render": {k: v for k, v in renders.items() if k in CATEGORIES},
        "heldout_render_images": len(rows),
        "noise_overall": noise["overall"],
        "shuffled_overall": shuffled["overall"],
        "shuffled_chance_overall": oracle["overall"],
        "reward_matched_mean": float(matched_reward.mean()),
        "reward_mismatched_mean": float(mismatched_reward.mean()),
        "reward_prefers_match": float((matched_reward > mismatched_reward).float().mean()),
    }
