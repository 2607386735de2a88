"""The GRPO loop on a tiny Llama: a simple reward must go up, and a killed run resumes."""

import dataclasses
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selftok.rl.params import RLParams
from selftok.rl.trainer import (
    RLRun,
    Scored,
    diversity,
    draw_prompts,
    policy_logprobs,
    pretraining_loss,
    train_grpo,
    visual_logits,
)
from selftok.tokenizer.checkpoint import latest_checkpoint
from selftok.vlm.generate import generate_images
from selftok.vlm.model import build_lm
from selftok.vlm.params import SamplingParams, VLMParams
from selftok.vlm.train import VLMTask
from selftok.vlm.vocab import VLMTokenizer

K, C, TARGET = 6, 8, 3
PROMPTS = [{"tag": t, "prompt": f"a photo of a {s}"} for t, s in [("single_object", "circle"), ("colors", "red star")]]


def tiny_run(seed: int = 0) -> RLRun:
    tokenizer = VLMTokenizer.build([p["prompt"] for p in PROMPTS] * 4, num_codes=C, num_tokens=K, text_vocab_size=300)
    lm = build_lm(VLMParams(size="tiny"), tokenizer, seed)

    def share_of_target(rows, codes):  # "use colour red": here, use code 3
        rewards = (codes == TARGET).float().mean(1)
        return Scored(rewards, (rewards > 0.5).tolist())

    return RLRun(lm, tokenizer, decode=lambda codes: codes, reward=share_of_target, features=lambda codes: codes.float(),
                 prompts=PROMPTS, sampling=SamplingParams(cfg_scale=1.0, batch_size=64), seed=seed)


def target_probability(run: RLRun) -> float:
    captions = run.tokenizer.encode_text([p["prompt"] for p in PROMPTS])
    codes = torch.zeros(len(PROMPTS), K, dtype=torch.long)
    with torch.no_grad():
        return float(torch.softmax(visual_logits(run.lm, run.tokenizer, captions, codes), -1)[..., TARGET].mean())


def test_grpo_raises_a_simple_reward(tmp_path: Path) -> None:
    run = tiny_run()
    before = target_probability(run)
    params = RLParams(steps=25, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.01, checkpoint_every=100)
    result = train_grpo(run, params, tmp_path / "ckpt")
    first = sum(h["reward"] for h in result.history[:5]) / 5
    last = sum(h["reward"] for h in result.history[-5:]) / 5
    assert last > first + 0.15, (first, last)
    assert target_probability(run) > before + 0.15
    assert all(h["kl"] >= 0 for h in result.history)


def test_exact_kl_and_cosine_schedule_in_the_loop(tmp_path: Path) -> None:
    params = RLParams(steps=6, prompts_per_step=2, group_size=4, lr=3e-3, beta=0.5, kl_estimator="exact", lr_decay="cosine",
                      warmup_steps=2, checkpoint_every=100)
    history = train_grpo(tiny_run(), params, tmp_path / "ckpt").history
    lrs = [h["lr"] for h in history]
    assert lrs[:3] == pytest.approx([1.5e-3, 3e-3, 3e-3])  # warmup, then the cosine starts at the peak
    assert all(a > b for a, b in itertools.pairwise(lrs[2:])) and lrs[-1] > 0.1 * 3e-3  # towards 10%
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step samples from the reference itself
    assert all(h["kl"] == pytest.approx(h["kl_exact"], rel=1e-4) for h in history)  # the penalised KL is the exact one
    assert history[-1]["kl_exact"] > 0


GUIDED = SamplingParams(cfg_scale=3.0, min_p=0.3, top_k=5, temperature=0.8, batch_size=512)


def test_guided_policy_is_the_distribution_the_sampler_draws_from() -> None:
    run = tiny_run()
    s, n = GUIDED, 4000
    codes = generate_images(run.lm, run.tokenizer, [PROMPTS[0]["prompt"]], n, s.cfg_scale, s.temperature, s.top_k, 0,
                            s.batch_size, min_p=s.min_p)
    captions = run.tokenizer.encode_text([PROMPTS[0]["prompt"]]) * C
    with torch.no_grad():  # every first code, each followed by anything: position 1 depends on the caption only
        first = torch.zeros(C, K, dtype=torch.long)
        first[:, 0] = torch.arange(C)
        guided = policy_logprobs(run.lm, run.tokenizer, captions, first, s, "guided")[0][:, 0].exp()
        conditional = policy_logprobs(run.lm, run.tokenizer, captions, first, s, "conditional")[0][:, 0].exp()
    empirical = torch.bincount(codes[:, 0], minlength=C).float() / n
    drawn = empirical > 0
    assert float(guided[drawn].sum()) == pytest.approx(1.0, abs=0.01)  # the drawn codes are the whole support
    assert torch.allclose(empirical[drawn], guided[drawn], atol=0.03)  # and each is drawn as often as its log-prob says
    assert (empirical - conditional).abs().max() > 0.05  # the plain conditional is a different distribution


def test_guided_policy_keeps_drawn_codes_finite_and_learns_a_simple_reward(tmp_path: Path) -> None:
    run = tiny_run()
    captions = run.tokenizer.encode_text([p["prompt"] for p in PROMPTS])
    codes = torch.randint(0, C, (len(PROMPTS), K))  # includes codes the filters would drop
    logp, _ = policy_logprobs(run.lm, run.tokenizer, captions, codes, GUIDED, "guided")
    assert torch.isfinite(logp).all()
    logp.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in run.lm.parameters() if p.grad is not None)

    run = tiny_run()
    params = RLParams(steps=25, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.01, policy="guided", checkpoint_every=100)
    history = train_grpo(dataclasses.replace(run, sampling=GUIDED), params, tmp_path / "ckpt").history
    first, last = (sum(h["reward"] for h in part) / 5 for part in (history[:5], history[-5:]))
    assert last > first + 0.15, (first, last)


def test_diversity_guard_stops_a_collapsing_run_and_keeps_its_last_healthy_checkpoint(tmp_path: Path) -> None:
    run = tiny_run()
    params = RLParams(steps=80, prompts_per_step=2, group_size=8, lr=2e-2, beta=0.0, checkpoint_every=4, min_distinct=0.9,
                      guard_window=3)
    result = train_grpo(run, params, tmp_path / "ckpt")  # "use code 3" pulls every sample onto one sequence
    assert result.collapsed_at is not None and result.collapsed_at < params.steps
    assert result.collapse is not None and result.collapse.startswith("distinct code sequences")
    window_start = result.collapsed_at - 3  # the weights kept come from before the window that showed it
    assert result.steps % 4 == 0 and window_start - 4 < result.steps <= window_start
    distinct = [h["distinct_codes"] for h in result.history]
    assert sum(distinct[-3:]) / 3 < 0.9 <= min(sum(distinct[i - 3 : i]) / 3 for i in range(3, result.collapsed_at))
    kept = load_file(str(tmp_path / "ckpt" / f"step_{result.steps:07d}" / "model.safetensors"))
    assert all(torch.equal(kept[name], value) for name, value in run.lm.state_dict().items())  # the model is that checkpoint
    assert latest_checkpoint(tmp_path / "ckpt").name == f"step_{result.steps:07d}"  # the collapsing ones are gone

    rerun = tiny_run()  # a rerun of the stage: it stays stopped, with the kept weights
    again = train_grpo(rerun, params, tmp_path / "ckpt")
    assert (again.steps, again.collapsed_at, again.collapse, again.history) == (result.steps, result.collapsed_at, result.collapse, [])
    assert all(torch.equal(kept[name], value) for name, value in rerun.lm.state_dict().items())


def test_killed_run_resumes_from_checkpoint(tmp_path: Path) -> None:
    params = RLParams(steps=4, prompts_per_step=2, group_size=4, lr=1e-3, checkpoint_every=2)
    train_grpo(tiny_run(), params.model_copy(update={"steps": 2}), tmp_path / "ckpt")  # "killed" after step 2
    assert latest_checkpoint(tmp_path / "ckpt").name == "step_0000002"
    resumed_run = tiny_run()  # a new process: pretrained weights, then the checkpoint
    resumed = train_grpo(resumed_run, params, tmp_path / "ckpt")
    assert resumed.resumed_from == 2 and len(resumed.history) == 2

    straight = tiny_run()
    train_grpo(straight, params, tmp_path / "straight")
    for a, b in zip(straight.lm.parameters(), resumed_run.lm.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_balanced_draw_gives_every_category_its_turn() -> None:
    prompts = [{"tag": "color_attr", "prompt": f"p{i}"} for i in range(90)] + [{"tag": "counting", "prompt": "c"}, {"tag": "colors", "prompt": "r"}]
    for step in range(20):
        drawn = draw_prompts(prompts, 6, random.Random(step), "balanced")
        tags = [r["tag"] for r in drawn]
        assert len(drawn) == 6 and sorted(tags) == sorted(["color_attr", "counting", "colors"] * 2)


def test_uniform_draw_follows_the_prompt_set() -> None:
    prompts = [{"tag": "color_attr", "prompt": f"p{i}"} for i in range(90)] + [{"tag": "counting", "prompt": "c"}]
    drawn = [r for step in range(50) for r in draw_prompts(prompts, 4, random.Random(step), "uniform")]
    assert all(len({r["prompt"] for r in drawn[i : i + 4]}) == 4 for i in range(0, len(drawn), 4))  # distinct within a step
    assert sum(r["tag"] == "counting" for r in drawn) < 10  # ~1 in 91 prompts, not 1 in 2 categories


def data_loss(run: RLRun, seed: int = 1) -> float:
    """The pretraining loss of ``run``'s policy on "data" that never uses the rewarded code."""
    codes = torch.randint(0, C - 1, (32, K), generator=torch.Generator().manual_seed(0))
    codes[codes == TARGET] = C - 1
    captions = run.tokenizer.encode_text([p["prompt"] for p in PROMPTS] * 16)
    task = VLMTask(run.lm, run.tokenizer, captions, codes, VLMParams(size="tiny"), torch.device("cpu"))
    run.ptx = pretraining_loss(task, 16, seed)
    with torch.no_grad():
        return float(run.ptx(0))


def test_pretraining_mix_holds_the_policy_to_its_data(tmp_path: Path) -> None:
    params = RLParams(steps=25, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.01, checkpoint_every=100)
    plain, mixed = tiny_run(), tiny_run()
    before = data_loss(plain)
    data_loss(mixed)  # attaches the pretraining batches
    assert torch.equal(mixed.ptx(3), mixed.ptx(3)) and not torch.equal(mixed.ptx(3), mixed.ptx(4))  # drawn from (seed, step)
    train_grpo(plain, params, tmp_path / "plain")  # no ptx_coef: the batches are ignored
    history = train_grpo(mixed, params.model_copy(update={"ptx_coef": 2.0}), tmp_path / "mixed").history
    assert all("ptx_loss" in h for h in history)
    assert data_loss(mixed) < data_loss(plain) and data_loss(plain) > before  # RL alone drifts off the data
    assert history[-1]["reward"] > history[0]["reward"]  # and the reward still rises


def test_realism_check_stops_a_run_whose_samples_leave_the_data(tmp_path: Path) -> None:
    """Samples pulled onto the rewarded code move away from "real" features (the untrained policy's own
    samples here): the realism check stops the run, and the checkpoints keep its first-window baseline."""
    run = tiny_run()
    with torch.no_grad():
        real = generate_images(run.lm, run.tokenizer, [p["prompt"] for p in PROMPTS], 64, 1.0, 1.0, 0, 99, 64).float()
    run.real_features = real
    params = RLParams(steps=60, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.0, checkpoint_every=4, guard_window=3,
                      max_frechet_ratio=3.0)
    result = train_grpo(run, params, tmp_path / "ckpt")
    assert all("frechet_to_real" in h for h in result.history)
    assert result.collapse is not None and result.collapse.startswith("Frechet distance to real renders"), result.collapse
    frechet = [h["frechet_to_real"] for h in result.history]
    assert sum(frechet[-3:]) / 3 > 3 * sum(frechet[:3]) / 3 and result.steps < result.collapsed_at
    state = json.loads((tmp_path / "ckpt" / f"step_{result.steps:07d}" / "state.json").read_text())
    assert state["guard_references"]["frechet_to_real"] == pytest.approx(sum(frechet[:3]) / 3)  # a resumed run keeps the baseline


def test_pixel_spread_sees_near_copies_that_codes_and_features_do_not() -> None:
    """Two groups of four: near-copies with distinct codes and scattered features, and varied images."""
    copies = torch.zeros(4, 3, 8, 8)
    copies[:, :, 2:4, 2:4] = 1.0
    copies[torch.arange(4), 0, 0, torch.arange(4)] = 0.1  # one faint pixel apart
    varied = torch.stack([torch.roll(copies[0], shifts=3 * i, dims=2) for i in range(4)])
    codes = torch.arange(8)[:, None].repeat(1, 3)  # every code sequence distinct
    features = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))  # the same scatter in both groups
    near = diversity(codes[:4], features[:4], copies * 2 - 1, 4)
    apart = diversity(codes[4:], features[4:], varied * 2 - 1, 4)
    assert near["distinct_codes"] == apart["distinct_codes"] == 1.0 and near["feature_spread"] > 0
    assert near["pixel_spread"] < 0.01 < apart["pixel_spread"]


def avoid_target(run: RLRun) -> Callable[[], dict[str, float]]:
    """A carry-over check that RL on ``share_of_target`` makes worse: how rarely the policy uses code 3."""

    def validate() -> dict[str, float]:
        codes = generate_images(run.lm, run.tokenizer, [PROMPTS[0]["prompt"]], 64, 1.0, 1.0, 0, 7, 64)
        share = float((codes != TARGET).float().mean())
        return {"overall": share, "strict": share}

    return validate


def test_best_val_selection_keeps_the_weights_that_carried_over_best(tmp_path: Path) -> None:
    run = tiny_run()
    run.validate = avoid_target(run)
    params = RLParams(steps=24, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.0, checkpoint_every=4, val_fraction=0.2,
                      val_every=8, select="best_val")
    result = train_grpo(run, params, tmp_path / "ckpt")
    steps = [h["step"] for h in result.validation]
    assert steps == [0, 8, 16, 24]
    strict = [h["strict"] for h in result.validation]
    assert strict[-1] < strict[0] - 0.1  # training on the reward unlearnt the check
    assert result.selected == result.steps == steps[strict.index(max(strict))] < 24
    kept = load_file(str(tmp_path / "ckpt" / "validation" / f"step_{result.selected:07d}.safetensors"))
    assert all(torch.equal(kept[name], value) for name, value in run.lm.state_dict().items())
    assert avoid_target(run)()["strict"] == pytest.approx(max(strict))  # the policy it ends with scores as validated

    last = tiny_run()
    last.validate = avoid_target(last)
    plain = train_grpo(last, params.model_copy(update={"select": "last"}), tmp_path / "last")
    assert plain.selected is None and plain.steps == 24
    assert avoid_target(last)()["strict"] == pytest.approx(strict[-1])  # same run, last weights kept


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_validation_and_selection(tmp_path: Path) -> None:
    params = RLParams(steps=8, prompts_per_step=2, group_size=4, lr=3e-3, beta=0.0, checkpoint_every=4, val_fraction=0.2,
                      val_every=2, select="best_val")

    def kill_at_7(step: int, logs: dict) -> None:
        if step == 7 and "val" not in logs:  # after step 6 was validated, before any checkpoint past 4
            raise Killed

    killed = tiny_run()
    killed.validate = avoid_target(killed)
    with pytest.raises(Killed):
        train_grpo(killed, params, tmp_path / "ckpt", on_log=kill_at_7)
    resumed = tiny_run()
    resumed.validate = avoid_target(resumed)
    result = train_grpo(resumed, params, tmp_path / "ckpt")  # from step 4: the validation of step 6 is redone
    straight = tiny_run()
    straight.validate = avoid_target(straight)
    reference = train_grpo(straight, params, tmp_path / "straight")
    assert result.resumed_from == 4 and [h["step"] for h in result.validation] == [0, 2, 4, 6, 8]
    assert [h["step"] for h in reference.validation] == [0, 2, 4, 6, 8]
    for a, b in zip(result.validation, reference.validation, strict=True):
        assert a["record"] == b["record"] and a["strict"] == pytest.approx(b["strict"])
    assert (result.steps, result.selected) == (reference.steps, reference.selected)
    for a, b in zip(straight.lm.parameters(), resumed.lm.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_guard_roll_back_discards_later_scores_and_validates_the_weights_it_keeps(tmp_path: Path) -> None:
    run = tiny_run()
    run.validate = avoid_target(run)
    params = RLParams(steps=80, prompts_per_step=2, group_size=8, lr=2e-2, beta=0.0, checkpoint_every=4, min_distinct=0.9,
                      guard_window=3, val_fraction=0.2, val_every=6, select="best_val")
    result = train_grpo(run, params, tmp_path / "ckpt")
    assert result.collapsed_at is not None
    kept = result.collapsed_at - 3 - (result.collapsed_at - 3) % 4  # the guard's checkpoint
    steps = [h["step"] for h in result.validation]
    assert max(steps) == kept and kept in steps  # nothing scored past the weights kept, and those were scored
    on_disk = json.loads((tmp_path / "ckpt" / "validation" / "history.json").read_text())
    assert [h["step"] for h in on_disk] == steps
    assert all(int(p.stem[5:]) <= kept for p in (tmp_path / "ckpt" / "validation").glob("step_*.safetensors"))
    assert result.steps == (result.selected if result.selected is not None else kept)


def test_best_val_needs_prompts_to_validate_on() -> None:
    with pytest.raises(ValueError, match="'best_val' needs val_fraction > 0"):
        RLParams(select="best_val")
