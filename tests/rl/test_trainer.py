"""The GRPO loop on a tiny Llama: a simple reward must go up, and a killed run resumes."""

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selftok.data.scenes import make_prompt
from selftok.eval.evaluator import ParsedObject
from selftok.eval.fidelity import diversity
from selftok.rl.params import RLParams
from selftok.rl.trainer import RLRun, Scored, draw_prompts, evaluator_reward, pretraining_loss, train_grpo, visual_logits
from selftok.training.checkpoint import latest_checkpoint
from selftok.vlm.generate import generate_images
from selftok.vlm.model import build_lm
from selftok.vlm.params import SamplingParams, VLMParams
from selftok.vlm.train import VLMTask
from selftok.vlm.vocab import VLMTokenizer

K, C, TARGET = 6, 8, 3
PROMPTS = [{"tag": t, "prompt": f"a photo of a {s}"} for t, s in [("single_object", "circle"), ("colors", "red star")]]
# The default recipe's guard and pretraining mix, off: each test turns on what it checks (validation runs where a test gives
# the run a validate function).
OFF = {"min_distinct": 0.0, "min_spread_ratio": 0.0, "min_pixel_spread_ratio": 0.0, "max_frechet_ratio": 0.0, "ptx_coef": 0.0}


def rl_params(**overrides: object) -> RLParams:
    return RLParams(**{**OFF, **overrides})


def tiny_run(seed: int = 0) -> RLRun:
    tokenizer = VLMTokenizer.build([p["prompt"] for p in PROMPTS] * 4, num_codes=C, num_tokens=K, text_vocab_size=300)
    lm = build_lm(VLMParams(size="tiny"), tokenizer, seed)

    def share_of_target(rows, codes):  # "use colour red": here, use code 3
        rewards = (codes == TARGET).float().mean(1)
        return Scored(rewards, (rewards > 0.5).tolist())

    return RLRun(lm=lm, tokenizer=tokenizer, decode=lambda codes: codes, reward=share_of_target, features=lambda codes: codes.float(),
                 prompts=PROMPTS, sampling=SamplingParams(cfg_scale=1.0, batch_size=64), seed=seed)


def target_probability(run: RLRun) -> float:
    captions = run.tokenizer.encode_text([p["prompt"] for p in PROMPTS])
    codes = torch.zeros(len(PROMPTS), K, dtype=torch.long)
    with torch.no_grad():
        return float(torch.softmax(visual_logits(run.lm, run.tokenizer, captions, codes), -1)[..., TARGET].mean())


def test_grpo_raises_a_simple_reward(tmp_path: Path) -> None:
    run = tiny_run()
    before = target_probability(run)
    params = rl_params(steps=25, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.01, checkpoint_every=100)
    result = train_grpo(run, params, tmp_path / "ckpt")
    first = sum(h["reward"] for h in result.history[:5]) / 5
    last = sum(h["reward"] for h in result.history[-5:]) / 5
    assert last > first + 0.15, (first, last)
    assert target_probability(run) > before + 0.15
    assert all(h["kl"] >= 0 for h in result.history)


def test_k3_kl_is_penalised_the_exact_kl_logged_and_the_lr_constant_after_warmup(tmp_path: Path) -> None:
    params = rl_params(steps=6, prompts_per_step=2, group_size=4, lr=3e-3, beta=0.5, warmup_steps=2, checkpoint_every=100)
    history = train_grpo(tiny_run(), params, tmp_path / "ckpt").history
    assert [h["lr"] for h in history] == pytest.approx([1.5e-3, 3e-3, 3e-3, 3e-3, 3e-3, 3e-3])
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step samples from the reference itself
    assert all(h["kl"] >= 0 for h in history) and history[-1]["kl_exact"] > 0
    assert any(h["kl"] != pytest.approx(h["kl_exact"], rel=1e-3) for h in history[1:])  # k3 on the drawn tokens, not the sum


def test_the_reward_is_the_judges_partial_credit_and_counts_extra_objects() -> None:
    class Evaluator:  # one circle asked for; the second image also draws a square nobody asked for
        def parse(self, images: torch.Tensor) -> list[list[ParsedObject]]:
            circle, square = ParsedObject("circle", "red", (0.0, 0.0, 8.0, 8.0)), ParsedObject("square", "blue", (10.0, 10.0, 18.0, 18.0))
            return [[circle], [circle, square]]

    rows, images = [make_prompt("single_object", ["circle"])] * 2, torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    plain = evaluator_reward(Evaluator())(rows, images)
    assert plain.reward.tolist() == [1.0, 1.0] and plain.correct == [True, True] and plain.extra == [0, 1]
    strict = evaluator_reward(Evaluator(), penalize_extra=True)(rows, images)
    assert strict.reward[0] == 1.0 and strict.reward[1] < 1.0


def test_diversity_guard_stops_a_collapsing_run_and_keeps_its_last_healthy_checkpoint(tmp_path: Path) -> None:
    run = tiny_run()
    params = rl_params(steps=80, prompts_per_step=2, group_size=8, lr=2e-2, beta=0.0, checkpoint_every=4, min_distinct=0.9,
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
    params = rl_params(steps=4, prompts_per_step=2, group_size=4, lr=1e-3, checkpoint_every=2)
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
        drawn = draw_prompts(prompts, 6, random.Random(step))
        tags = [r["tag"] for r in drawn]
        assert len(drawn) == 6 and sorted(tags) == sorted(["color_attr", "counting", "colors"] * 2)


def data_loss(run: RLRun, seed: int = 1) -> float:
    """The pretraining loss of ``run``'s policy on "data" that never uses the rewarded code."""
    codes = torch.randint(0, C - 1, (32, K), generator=torch.Generator().manual_seed(0))
    codes[codes == TARGET] = C - 1
    captions = run.tokenizer.encode_text([p["prompt"] for p in PROMPTS] * 16)
    task = VLMTask(lm=run.lm, tokenizer=run.tokenizer, captions=captions, codes=codes, params=VLMParams(size="tiny"),
                   device=torch.device("cpu"))
    run.ptx = pretraining_loss(task, 16, seed)
    with torch.no_grad():
        return float(run.ptx(0))


def test_pretraining_mix_holds_the_policy_to_its_data(tmp_path: Path) -> None:
    params = rl_params(steps=25, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.01, checkpoint_every=100)
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
        real = generate_images(run.lm, run.tokenizer, [p["prompt"] for p in PROMPTS], n=64, seed=99).float()
    run.real_features = real
    params = rl_params(steps=60, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.0, checkpoint_every=4, guard_window=3,
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
        codes = generate_images(run.lm, run.tokenizer, [PROMPTS[0]["prompt"]], n=64, seed=7)
        share = float((codes != TARGET).float().mean())
        return {"overall": share, "strict": share}

    return validate


def test_best_val_selection_keeps_the_weights_that_carried_over_best(tmp_path: Path) -> None:
    run = tiny_run()
    run.validate = avoid_target(run)
    params = rl_params(steps=24, prompts_per_step=2, group_size=8, lr=3e-3, beta=0.0, checkpoint_every=4,
                       val_every=8)
    result = train_grpo(run, params, tmp_path / "ckpt")
    steps = [h["step"] for h in result.validation]
    assert steps == [0, 8, 16, 24]
    strict = [h["strict"] for h in result.validation]
    assert strict[-1] < strict[0] - 0.1  # training on the reward unlearnt the check
    assert result.selected == result.steps == steps[strict.index(max(strict))] < 24
    kept = load_file(str(tmp_path / "ckpt" / "validation" / f"step_{result.selected:07d}.safetensors"))
    assert all(torch.equal(kept[name], value) for name, value in run.lm.state_dict().items())
    assert avoid_target(run)()["strict"] == pytest.approx(max(strict))  # the policy it ends with scores as validated

    last = tiny_run()  # without validation the run keeps its last weights
    plain = train_grpo(last, params, tmp_path / "last")
    assert plain.selected is None and plain.steps == 24 and plain.validation == []


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_validation_and_selection(tmp_path: Path) -> None:
    params = rl_params(steps=8, prompts_per_step=2, group_size=4, lr=3e-3, beta=0.0, checkpoint_every=4,
                       val_every=2)

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
    params = rl_params(steps=80, prompts_per_step=2, group_size=8, lr=2e-2, beta=0.0, checkpoint_every=4, min_distinct=0.9,
                       guard_window=3, val_every=6)
    result = train_grpo(run, params, tmp_path / "ckpt")
    assert result.collapsed_at is not None
    kept = result.collapsed_at - 3 - (result.collapsed_at - 3) % 4  # the guard's checkpoint
    steps = [h["step"] for h in result.validation]
    assert max(steps) == kept and kept in steps  # nothing scored past the weights kept, and those were scored
    on_disk = json.loads((tmp_path / "ckpt" / "validation" / "history.json").read_text())
    assert [h["step"] for h in on_disk] == steps
    assert all(int(p.stem[5:]) <= kept for p in (tmp_path / "ckpt" / "validation").glob("step_*.safetensors"))
    assert result.steps == (result.selected if result.selected is not None else kept)


def test_sampling_and_updates_take_the_precision_keys_and_a_cpu_run_ignores_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import selftok.rl.trainer as trainer

    params = rl_params(steps=2, prompts_per_step=2, group_size=4, checkpoint_every=100)
    plain = train_grpo(tiny_run(), params, tmp_path / "plain").history
    seen = []
    real = trainer.autocast
    monkeypatch.setattr(trainer, "autocast", lambda p, device: seen.append((p.mixed_precision, p.tf32, str(device))) or real(p, device))
    mixed = train_grpo(tiny_run(), params.model_copy(update={"mixed_precision": "bf16", "tf32": True}), tmp_path / "mixed").history
    assert len(seen) == 4 and set(seen) == {("bf16", True, "cpu")}  # a sample and an update per step
    assert mixed == plain
