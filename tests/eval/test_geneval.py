import random

import pytest
import torch
from scene_fixtures import HOLDOUT, OracleEvaluator

from selftok.config import parse_params
from selftok.data.scenes import CATEGORIES, SceneConfig, SceneGenerator, make_prompt
from selftok.eval.evaluator import ParsedObject
from selftok.eval.geneval import (
    PROMPT_SETS,
    TEST_PROMPTS,
    allot,
    build_prompt_sets,
    held_out_pairs,
    judge,
    prompt_sets,
    relative_position,
    render_prompts,
    reward,
    sanity_metrics,
    scene_config,
    summarize,
    table,
)
from selftok.eval.params import GenevalParams


def obj(shape: str, color: str, x: float, y: float, side: float = 10.0, score: float = 1.0) -> ParsedObject:
    return ParsedObject(shape, color, (x - side / 2, y - side / 2, x + side / 2, y + side / 2), score)


def test_prompt_sets_are_deterministic_disjoint_and_hold_out_pairs(scene_config: SceneConfig) -> None:
    params = GenevalParams()
    sets = build_prompt_sets(scene_config, 0, params)
    assert sets == build_prompt_sets(scene_config, 0, params)
    assert sets != build_prompt_sets(scene_config, 1, params)
    assert tuple(sets) == PROMPT_SETS
    strings = {name: {r["prompt"] for r in records} for name, records in sets.items()}
    for i, a in enumerate(PROMPT_SETS):
        for b in PROMPT_SETS[i + 1 :]:
            assert not strings[a] & strings[b], (a, b)
    for name, records in sets.items():
        assert {r["tag"] for r in records} == set(CATEGORIES), name
        assert all(set(r) == {"tag", "prompt", "include", "exclude"} for r in records)
    assert max(sum(r["tag"] == t for r in sets["compositional"]) for t in CATEGORIES) <= params.max_heldout_per_category
    pairs = {tuple(p.split(" ")) for p in HOLDOUT}
    named = [(i.get("color"), i["class"]) for name in ("rl_train", "rl_select", "rl_test") for r in sets[name] for i in r["include"]]
    assert not pairs & set(named)
    assert held_out_pairs(sets["compositional"], HOLDOUT)
    assert all(pairs & {(i.get("color"), i["class"]) for i in r["include"]} for r in held_out_pairs(sets["compositional"], HOLDOUT))
    # both wordings of one request stay in one set
    a = make_prompt("position", ["circle", "square"], relation="left of")["prompt"]
    mirror = make_prompt("position", ["square", "circle"], relation="right of")["prompt"]
    assert [a in strings[n] for n in PROMPT_SETS] == [mirror in strings[n] for n in PROMPT_SETS]


def test_rl_test_takes_up_to_sixteen_prompts_and_leaves_rl_groups_to_train_and_select(scene_config: SceneConfig) -> None:
    sets = build_prompt_sets(scene_config, 0, GenevalParams())
    for tag in CATEGORIES:
        n = {name: sum(r["tag"] == tag for r in sets[name]) for name in PROMPT_SETS}
        assert n["rl_train"] >= 1 and n["rl_select"] >= 1, (tag, n)
        assert 1 <= n["rl_test"] <= TEST_PROMPTS + 1, (tag, n)  # a group holds one or two wordings
    assert sum(r["tag"] == "color_attr" for r in sets["rl_test"]) >= TEST_PROMPTS
    without = build_prompt_sets(scene_config, 0, GenevalParams(select_fraction=0.0))
    assert without["rl_select"] == [] and without["rl_test"] == sets["rl_test"]
    assert len(without["rl_train"]) == len(sets["rl_train"]) + len(sets["rl_select"])
    assert without["compositional"] == sets["compositional"]  # the captions of the training images do not move


def test_allot_takes_what_there_is() -> None:
    groups = [[{"prompt": str(i)}] for i in range(5)]
    assert allot([], 0.25) == ([], [], [])  # a category with no captionable request left
    assert allot(groups[:1], 0.25) == (groups[:1], [], [])
    test, select, train = allot(groups, 0.25)
    assert (len(test), len(select), len(train)) == (2, 1, 2) and test + select + train == groups


def test_relative_position_follows_geneval() -> None:
    a, b = obj("circle", "red", 5, 16), obj("square", "blue", 25, 16)
    assert relative_position(a, b) == {"left of"} and relative_position(b, a) == {"right of"}
    assert relative_position(obj("circle", "red", 5, 5), obj("square", "blue", 25, 25)) == {"left of", "above"}
    assert relative_position(obj("circle", "red", 15, 16), obj("square", "blue", 16, 16)) == set()  # within the margin


def test_judge_applies_counts_colours_and_positions() -> None:
    two = make_prompt("counting", ["circle"], count=2)
    circles = [obj("circle", "red", 5, 5), obj("circle", "blue", 25, 5), obj("circle", "green", 5, 25)]
    assert judge(two, circles[:2]).correct
    too_many, too_few = judge(two, circles), judge(two, circles[:1])
    assert not too_many.correct and not too_few.correct
    assert 0 < too_many.reward < 1 and 0 < too_few.reward < 1

    red = make_prompt("colors", ["circle"], ["red"])
    # a weaker red circle still counts: objects of the asked colour are taken first
    assert judge(red, [obj("circle", "blue", 5, 5, score=0.9), obj("circle", "red", 25, 5, score=0.6)]).correct
    blue_only = judge(red, [obj("circle", "blue", 5, 5)])
    assert not blue_only.correct and blue_only.reward == pytest.approx(2 / 3)

    left = make_prompt("position", ["circle", "square"], relation="left of")
    assert judge(left, [obj("circle", "red", 5, 16), obj("square", "red", 25, 16)]).correct
    swapped = judge(left, [obj("circle", "red", 25, 16), obj("square", "red", 5, 16)])
    assert not swapped.correct and swapped.reward == pytest.approx(4 / 5)
    assert judge(left, []).reward == 0.0


def test_clutter_passes_the_rules_but_the_shaped_reward_counts_it() -> None:
    circle = make_prompt("single_object", ["circle"])
    clutter = [obj("circle", "red", 5, 5), obj("square", "red", 25, 5), obj("star", "blue", 5, 25), obj("triangle", "red", 25, 25)]
    verdict = judge(circle, clutter)
    assert verdict.correct and verdict.reward == 1.0  # GenEval's rules: one circle is there
    assert (verdict.asked, verdict.extra) == (1, 3)
    assert verdict.shaped_reward(penalize_extra=True) == pytest.approx((1 + 1 + 1 / 4) / 3)
    alone = judge(circle, clutter[:1])
    assert alone.extra == 0 and alone.shaped_reward(penalize_extra=True) == 1.0
    two = judge(make_prompt("two_objects", ["circle", "square"]), clutter)
    assert two.correct and two.extra == 2 and two.shaped_reward(penalize_extra=True) < two.reward


def test_reward_is_one_exactly_when_correct(scene_config: SceneConfig) -> None:
    heldout = build_prompt_sets(scene_config, 0, GenevalParams(max_heldout_per_category=6))["compositional"]
    rows, _, truths = render_prompts(heldout, SceneGenerator(scene_config, 0), 1)
    rng = random.Random(0)
    for _ in range(300):
        record, objects = rng.choice(rows), rng.choice(truths)
        verdict = judge(record, objects)
        assert 0.0 <= verdict.reward <= 1.0
        assert (verdict.reward == 1.0) == verdict.correct


def test_real_renders_of_heldout_prompts_pass_on_exact_objects(scene_config: SceneConfig) -> None:
    heldout = build_prompt_sets(scene_config, 0, GenevalParams())["compositional"]
    rows, images, truths = render_prompts(heldout, SceneGenerator(scene_config, 0), 2)
    assert images.dtype == torch.uint8 and images.shape == (len(rows), 3, 32, 32)
    failures = [(r["prompt"], judge(r, t).reasons) for r, t in zip(rows, truths, strict=True) if not judge(r, t).correct]
    assert not failures


def test_sanity_metrics_with_a_perfect_parser(scene_config: SceneConfig) -> None:
    heldout = build_prompt_sets(scene_config, 0, GenevalParams(max_heldout_per_category=10))["compositional"]
    generator = SceneGenerator(scene_config, 0)
    oracle = OracleEvaluator()
    _, images, truths = render_prompts(heldout, generator, 2)
    oracle.learn(images, truths)
    metrics = sanity_metrics(oracle, heldout, generator, 2, 200, seed=0)  # type: ignore[arg-type]
    assert metrics["heldout_render_overall"] == 1.0 and set(metrics["heldout_render"]) == set(CATEGORIES)
    assert metrics["noise_overall"] == 0.0
    assert metrics["shuffled_overall"] == metrics["shuffled_chance_overall"] < 0.3
    assert metrics["reward_matched_mean"] == 1.0 > metrics["reward_mismatched_mean"]
    assert metrics["reward_prefers_match"] > 0.8


def test_reward_is_a_batch_tensor(scene_config: SceneConfig) -> None:
    heldout = build_prompt_sets(scene_config, 0, GenevalParams(max_heldout_per_category=2))["compositional"]
    rows, images, truths = render_prompts(heldout, SceneGenerator(scene_config, 0), 1)
    oracle = OracleEvaluator()
    oracle.learn(images, truths)
    matched = reward(rows, images, oracle)  # type: ignore[arg-type]
    assert matched.dtype == torch.float32 and matched.shape == (len(rows),)
    assert torch.equal(matched, torch.ones(len(rows)))
    shuffled = reward(rows[1:] + rows[:1], images, oracle)  # type: ignore[arg-type]
    assert shuffled.mean() < matched.mean() and ((shuffled >= 0) & (shuffled <= 1)).all()
    with pytest.raises(ValueError, match="one prompt record per image"):
        reward(rows[:-1], images, oracle)  # type: ignore[arg-type]


def test_overall_is_the_mean_of_category_accuracies() -> None:
    records = [{"tag": "single_object"}] * 4 + [{"tag": "counting"}]
    summary = summarize(records, [True, True, True, True, False])
    assert summary["overall"] == 0.5 and summary["single_object"] == 1.0 and summary["counting"] == 0.0
    assert summary["images"] == {"single_object": 4, "counting": 1}
    assert "| counting | 1 | 0.000 |" in table(summary)


def test_prompt_sets_of_a_params_file() -> None:
    params = parse_params({"seed": 3, "geneval": {"max_heldout_per_category": 5}})
    sets = prompt_sets(params.data, params.seed, params.geneval)
    assert sets == build_prompt_sets(scene_config(params.data), 3, params.geneval)
    assert scene_config(params.data).holdout == tuple(params.data.scenes.holdout)
    assert max(sum(r["tag"] == t for r in sets["compositional"]) for t in CATEGORIES) == 5


def test_sampling_standard_error_by_hand() -> None:
    """single_object: one prompt, 4 images, 2 right (p 0.5); counting: one prompt always right.
    Var(single_object) = 4^2 * 0.25 / 3 / 4^2 = 1/12; overall averages two categories: 1/48."""
    records = [{"tag": "single_object", "prompt": "a"}] * 4 + [{"tag": "counting", "prompt": "b"}] * 2
    summary = summarize(records, [True, False, True, False, True, True])
    assert summary["overall"] == 0.75
    assert summary["overall_se"] == pytest.approx((1 / 48) ** 0.5)
    assert summarize(records, [True] * 6)["overall_se"] == 0.0  # no spread within any prompt


def test_sampling_standard_error_matches_redrawn_seeds() -> None:
    """Prompts with known success rates, drawn again and again: the estimate from one draw is
    close to the spread of overall over many draws."""
    g = torch.Generator().manual_seed(0)
    rates = {("single_object", "a"): 0.5, ("single_object", "b"): 0.2, ("counting", "c"): 0.1, ("counting", "d"): 0.7}
    records = [{"tag": tag, "prompt": prompt} for (tag, prompt) in rates for _ in range(16)]
    p = torch.tensor([rates[(r["tag"], r["prompt"])] for r in records])
    draws = [summarize(records, (torch.rand(len(p), generator=g) < p).tolist()) for _ in range(400)]
    spread = torch.tensor([d["overall"] for d in draws]).std().item()
    estimate = sum(d["overall_se"] for d in draws) / len(draws)
    assert estimate == pytest.approx(spread, rel=0.15)
