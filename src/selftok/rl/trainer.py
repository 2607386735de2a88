"""The GRPO loop: sample groups of images per prompt, reward them with the scene evaluator,
and push the policy towards the better members of each group (docs/method.md).

Samples are drawn with the evaluation recipe (CFG, temperature, top-k, min-p). The gradient is
that of the model's own conditional log-probabilities of the drawn tokens, at temperature 1
without guidance: the sampler is a different distribution, so the estimate is off-policy, and
putting the sampler's own guided log-probabilities in the loss instead scored worse
(docs/experiments.md, "RL recipes"). The k3 KL penalty and the logged entropy are on the same
conditional distribution. Prompts come in balanced categories, each batch makes one update, and
with carry-over validation the weights that validated best are kept.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel

from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import diversity, frechet_distance
from selftok.eval.geneval import judge_images
from selftok.progress import track
from selftok.rl.grpo import LossParts, exact_kl, group_advantages, grpo_loss, k3_kl, token_entropy
from selftok.rl.guard import DiversityGuard
from selftok.rl.params import RLParams
from selftok.rl.selection import BestWeights, Validate
from selftok.training.checkpoint import latest_checkpoint, load_checkpoint, roll_back_to, save_checkpoint
from selftok.training.params import GRAD_CLIP
from selftok.training.precision import autocast
from selftok.training.schedules import lr_factor
from selftok.vlm.generate import generate_images
from selftok.vlm.params import SamplingParams
from selftok.vlm.sequences import left_pad, t2i_prompt
from selftok.vlm.train import VLMTask
from selftok.vlm.vocab import VLMTokenizer

log = logging.getLogger(__name__)
VALIDATION = "validation"  # under the checkpoint folder: carry-over scores and the weights of each new best
Record = dict[str, Any]
DecodeFn = Callable[[torch.Tensor], torch.Tensor]


def visual_logits(lm: PreTrainedModel, tokenizer: VLMTokenizer, captions: Sequence[Sequence[int]], codes: torch.Tensor) -> torch.Tensor:
    """Logits over the visual vocabulary [N, K, C] for each position of the given image spans."""
    k = tokenizer.num_tokens
    spans = tokenizer.code_to_token(codes).tolist()
    ids, mask = left_pad([t2i_prompt(tokenizer, cap) + span for cap, span in zip(captions, spans, strict=True)], tokenizer.pad_id)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # as generate() numbers left-padded rows
    device = lm.device
    logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)).logits
    return logits[:, -k - 1 : -1, tokenizer.visual_offset : tokenizer.visual_offset + tokenizer.num_codes].float()


def logprobs(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, -1).gather(-1, codes.to(logits.device).unsqueeze(-1)).squeeze(-1)


@dataclass(kw_only=True)
class RLResult:
    steps: int  # the step of the weights the run ends with
    resumed_from: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    collapsed_at: int | None = None  # the step at which the diversity guard stopped the run
    collapse: str | None = None  # what the guard saw
    validation: list[dict[str, Any]] = field(default_factory=list)  # carry-over scores by step (selftok.rl.selection)
    selected: int | None = None  # set when validation kept an earlier step's weights than the run reached


class Scored(NamedTuple):
    reward: torch.Tensor  # [N]
    correct: list[bool]
    extra: list[int] | None = None  # objects drawn beyond those asked (None: not counted)


RewardFn = Callable[[Sequence[Record], torch.Tensor], Scored]


def evaluator_reward(evaluator: SceneEvaluator, penalize_extra: bool = False) -> RewardFn:
    """The benchmark's judge as a reward: partial credit per sub-check (with ``penalize_extra``, also
    one against objects nobody asked for), whether fully correct, and the extra objects."""

    def reward(rows: Sequence[Record], images: torch.Tensor) -> Scored:
        judgements = judge_images(rows, images, evaluator)
        shaped = torch.tensor([j.shaped_reward(penalize_extra) for j in judgements])
        return Scored(shaped, [j.correct for j in judgements], [j.extra for j in judgements])

    return reward


@dataclass(kw_only=True)
class RLRun:
    """Everything a GRPO run needs besides its params: policy, renderer, judge and prompts."""

    lm: PreTrainedModel
    tokenizer: VLMTokenizer
    decode: DecodeFn
    reward: RewardFn
    features: Callable[[torch.Tensor], torch.Tensor]  # image features for the diversity guard
    prompts: list[Record]
    sampling: SamplingParams
    seed: int
    ptx: Callable[[int], torch.Tensor] | None = None  # step -> the policy's pretraining loss (rl.ptx_coef > 0)
    real_features: torch.Tensor | None = None  # evaluator features of real renders of RL prompts (the realism check)
    validate: Validate | None = None  # scores of the policy on prompts it never trains on (rl_select)


def pretraining_loss(task: VLMTask, batch_size: int, seed: int) -> Callable[[int], torch.Tensor]:
    """The pretraining objective on ``batch_size`` random training sequences per RL step (PPO-ptx).
    The draw derives from (seed, step), so a resumed run sees the batches an uninterrupted one would."""

    def loss(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        index = torch.randint(len(task.captions), (batch_size,), generator=generator)
        return task.loss(task.module, index, generator)[0]

    return loss


def draw_prompts(prompts: Sequence[Record], n: int, rng: random.Random) -> list[Record]:
    """The prompts of one RL step: categories in turn (each round shuffled), a random prompt of
    each, so every category gets the same share of updates, as it has the same weight in the
    benchmark's overall score (drawn in proportion to the prompt set, 82% would be color_attr)."""
    by_tag: dict[str, list[Record]] = {}
    for record in prompts:
        by_tag.setdefault(record["tag"], []).append(record)
    tags = sorted(by_tag)
    order: list[str] = []
    while len(order) < n:
        order += rng.sample(tags, len(tags))
    return [rng.choice(by_tag[tag]) for tag in order[:n]]


@dataclass(kw_only=True)
class Samples:
    """One step's groups: prompts (one row per image), codes, decoded images and their rewards."""

    rows: list[Record]
    codes: torch.Tensor
    images: torch.Tensor
    scored: Scored


@dataclass(kw_only=True)
class Update:
    """What one policy update computed, for the step's logs."""

    parts: LossParts
    loss: torch.Tensor
    ptx: torch.Tensor | None
    logits: torch.Tensor  # conditional visual logits of the drawn codes [N, K, C]
    ref_logits: torch.Tensor | None
    grad_norm: torch.Tensor


@dataclass(kw_only=True)
class GRPO:
    """A run in progress: the policy's optimizer, the frozen reference, the guard, the validation
    records and the result so far. ``train_grpo`` drives it step by step."""

    run: RLRun
    params: RLParams
    checkpoints: Path
    optimizer: torch.optim.Optimizer
    reference: PreTrainedModel | None
    guard: DiversityGuard
    result: RLResult
    best: BestWeights | None
    on_log: Callable[[int, dict[str, Any]], None] | None = None
    on_samples: Callable[[int, torch.Tensor], None] | None = None
    keep: int = 1  # checkpoints kept: with the guard on, one from before its window

    @classmethod
    def start(cls, run: RLRun, params: RLParams, checkpoints: Path) -> GRPO:
        """A fresh run, or the one in ``checkpoints`` resumed (a run the guard stopped stays stopped)."""
        lm = run.lm
        optimizer = torch.optim.AdamW(lm.parameters(), lr=params.lr, weight_decay=params.weight_decay, betas=(0.9, 0.95))
        reference = copy.deepcopy(lm).eval().requires_grad_(False) if params.beta > 0 else None
        guard = DiversityGuard.from_params(params, realism=run.real_features is not None)
        start, extra = 0, {}
        latest = latest_checkpoint(checkpoints)
        if latest is not None:
            start, state, extra = load_checkpoint(latest, optimizer)
            lm.load_state_dict(state)
            guard.references = dict(extra.get("guard_references", {}))
            log.info("rl: resumed from %s (step %d)", latest, start)
        keep = params.guard_window // params.checkpoint_every + 2 if guard.active else 1
        if latest is None and guard.active:  # the guard always has a checkpoint to fall back to
            save_checkpoint(folder=checkpoints, step=0, model_state=lm.state_dict(), optimizer=optimizer, extra={"seed": run.seed})
        result = RLResult(steps=params.steps, resumed_from=start, seconds=0.0, collapsed_at=extra.get("collapsed_at"),
                          collapse=extra.get("collapse"))
        if result.collapse:
            log.warning("rl: %s was kept after a collapse at step %s (%s)", latest, result.collapsed_at, result.collapse)
            result.steps = start
        best = BestWeights.open(checkpoints / VALIDATION, start, params.select_margin) if run.validate is not None else None
        return cls(run=run, params=params, checkpoints=checkpoints, optimizer=optimizer, reference=reference, guard=guard,
                   result=result, best=best, keep=keep)

    def validate(self, step: int) -> None:
        """Score the policy on the set-aside prompts and keep its weights when they are a new best."""
        assert self.run.validate is not None and self.best is not None
        self.run.lm.eval()
        scores = self.run.validate()
        self.best.add(step, scores, self.run.lm.state_dict())
        if self.on_log:
            self.on_log(step, {"val": scores})
        log.info("rl: step %d, carry-over validation %s", step, " ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    def sample(self, step: int) -> Samples:
        """The step's prompts, a group of images for each, drawn with the evaluation recipe, and their rewards."""
        run, p, s = self.run, self.params, self.run.sampling
        records = draw_prompts(run.prompts, p.prompts_per_step, random.Random(f"{run.seed}/rl/{step}"))
        rows = [r for r in records for _ in range(p.group_size)]
        run.lm.eval()
        with autocast(p, run.lm.device):
            codes = generate_images(run.lm, run.tokenizer, [r["prompt"] for r in records], n=p.group_size, cfg_scale=s.cfg_scale,
                                    temperature=s.temperature, top_k=s.top_k, seed=run.seed * 100_003 + step,
                                    batch_size=s.batch_size, min_p=s.min_p)
        images = run.decode(codes)
        return Samples(rows=rows, codes=codes, images=images, scored=run.reward(rows, images))

    def update(self, step: int, samples: Samples) -> Update:
        """One policy-gradient step on the group-normalised rewards, with the KL and pretraining terms."""
        run, p, lm = self.run, self.params, self.run.lm
        advantages = group_advantages(samples.scored.reward, p.group_size)
        captions = run.tokenizer.encode_text([r["prompt"] for r in samples.rows])
        lm.train()
        with autocast(p, lm.device):
            with torch.no_grad():
                ref_logits = visual_logits(self.reference, run.tokenizer, captions, samples.codes) if self.reference else None
            logits = visual_logits(lm, run.tokenizer, captions, samples.codes)
            logp = logprobs(logits, samples.codes)
            kl = k3_kl(logp, logprobs(ref_logits, samples.codes)) if ref_logits is not None else None
            parts = grpo_loss(logp, kl, advantages.to(logp.device), p.beta)
            ptx = run.ptx(step) if run.ptx is not None and p.ptx_coef > 0 else None
            loss = parts.loss if ptx is None else parts.loss + p.ptx_coef * ptx
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), GRAD_CLIP)
        self.optimizer.step()
        return Update(parts=parts, loss=loss, ptx=ptx, logits=logits, ref_logits=ref_logits, grad_norm=grad_norm)

    def logs(self, samples: Samples, update: Update) -> dict[str, Any]:
        """The step's metrics: reward, KL, entropy, diversity and distance to real renders."""
        scored, real = samples.scored, self.run.real_features
        entropy = token_entropy(update.logits.detach()).mean(0)
        features = self.run.features(samples.images)
        return {
            "reward": float(scored.reward.mean()),
            "correct": sum(scored.correct) / len(scored.correct),
            **({"extra_objects": sum(scored.extra) / len(scored.extra)} if scored.extra is not None else {}),
            "loss": float(update.loss.detach()),
            **({"ptx_loss": float(update.ptx.detach())} if update.ptx is not None else {}),
            "kl": float(update.parts.kl),
            **({"kl_exact": float(exact_kl(update.logits.detach(), update.ref_logits).mean())} if update.ref_logits is not None else {}),
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": float(update.grad_norm),
            "entropy_first_token": float(entropy[0]),
            "entropy_last_token": float(entropy[-1]),
            "entropy_mean": float(entropy.mean()),
            "entropy_by_position": {f"v{i + 1:03d}": float(e) for i, e in enumerate(entropy)},
            "reward_by_category": _by_category(samples.rows, scored.reward),
            **diversity(samples.codes, features, samples.images, self.params.group_size),
            **({"frechet_to_real": frechet_distance(features, real)} if real is not None else {}),
        }

    def step(self, step: int) -> bool:
        """Train one step, log it, and check, validate and checkpoint after it; True when the guard stopped the run."""
        p = self.params
        for group in self.optimizer.param_groups:
            group["lr"] = p.lr * lr_factor(step, p.steps, p.warmup_steps, "constant")
        samples = self.sample(step)
        logs = self.logs(samples, self.update(step, samples))
        self.result.history.append({k: v for k, v in logs.items() if isinstance(v, float)})
        if self.on_log:
            self.on_log(step + 1, logs)
        if self.on_samples and ((step + 1) % p.sample_every == 0 or step == self.result.resumed_from):
            self.on_samples(step + 1, samples.images[: 4 * p.group_size])  # the groups of the first 4 prompts
        self.result.collapse = self.guard.check(self.result.history)
        if self.result.collapse:
            self.roll_back(step)
            return True
        if self.best is not None and ((step + 1) % p.val_every == 0 or step + 1 == p.steps):
            self.validate(step + 1)
        if (step + 1) % p.checkpoint_every == 0 or step + 1 == p.steps:
            save_checkpoint(folder=self.checkpoints, step=step + 1, model_state=self.run.lm.state_dict(), optimizer=self.optimizer,
                            extra={"seed": self.run.seed, "guard_references": self.guard.references}, keep=self.keep)
        return False

    def roll_back(self, step: int) -> None:
        """Fall back to the newest checkpoint at or before the start of the window that showed a collapse."""
        result = self.result
        last_healthy = latest_checkpoint(self.checkpoints, at_most=step + 1 - self.params.guard_window)
        if last_healthy is None:
            raise RuntimeError(f"{self.checkpoints}: the diversity guard found no checkpoint to fall back to")
        result.steps, state, _ = load_checkpoint(last_healthy, self.optimizer)
        self.run.lm.load_state_dict(state)
        result.collapsed_at = step + 1
        log.warning("rl: collapse at step %d (%s); keeping step %d", step + 1, result.collapse, result.steps)
        roll_back_to(last_healthy, {"collapsed_at": result.collapsed_at, "collapse": result.collapse})  # a rerun stays stopped
        if self.best is not None:  # scores of the discarded steps go; the weights kept are a candidate
            self.best.truncate(result.steps)
            if not self.best.validated(result.steps):
                self.validate(result.steps)

    def finish(self) -> RLResult:
        """With validation on, keep the weights that validated best up to the step the run ends at."""
        result, best = self.result, self.best
        if best is not None:
            result.validation = best.history
            chosen = best.best(at_most=result.steps)
            if chosen is not None and chosen["step"] != result.steps:
                self.run.lm.load_state_dict(best.load(chosen["step"]))
                result.steps = result.selected = chosen["step"]
                log.warning("rl: keeping step %d, the best on carry-over validation (%s %.3f)", chosen["step"], best.key, chosen[best.key])
        return result


def train_grpo(
    run: RLRun,
    params: RLParams,
    checkpoints: Path,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
    on_samples: Callable[[int, torch.Tensor], None] | None = None,
) -> RLResult:
    """Train ``run.lm`` by GRPO to ``params.steps``, resuming from ``checkpoints``; the guard may stop
    it early, and validation may keep earlier weights. Returns what was kept and the per-step history."""
    grpo = GRPO.start(run, params, checkpoints)
    grpo.on_log, grpo.on_samples = on_log, on_samples
    started = time.perf_counter()
    if grpo.best is not None and not grpo.best.history:  # a fresh run: the pretrained policy is a candidate too
        grpo.validate(grpo.result.resumed_from)
    end = grpo.result.steps if grpo.result.collapse else params.steps
    for step in track(range(grpo.result.resumed_from, end), "rl", total=params.steps, initial=grpo.result.resumed_from):
        if grpo.step(step):
            break
    result = grpo.finish()
    result.seconds = time.perf_counter() - started
    return result


def _by_category(rows: Sequence[Record], rewards: torch.Tensor) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row, value in zip(rows, rewards.tolist(), strict=True):
        sums.setdefault(row["tag"], []).append(value)
    return {tag: sum(v) / len(v) for tag, v in sorted(sums.items())}
