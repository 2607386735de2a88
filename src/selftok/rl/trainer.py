"""The GRPO loop: sample groups of images per prompt, reward them with the scene evaluator,
and push the policy towards the better members of each group (METHOD.md section 5).

Samples are drawn with the evaluation recipe (CFG, temperature, top-k, min-p). The policy whose
log-probabilities of the drawn tokens carry the gradient is ``rl.policy``: ``conditional``, the
model's own distribution at temperature 1 without guidance (the sampler is then a different
distribution, and the gradient is off-policy), or ``guided``, the distribution the sampler drew
from (conditional and unconditional passes, both differentiated), which makes it on-policy. The
KL penalty and the logged entropy are always on the conditional distribution.
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
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from selftok.data.dataset import to_uint8
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import frechet_distance
from selftok.eval.geneval import judge_images
from selftok.rl.grpo import exact_kl, group_advantages, grpo_loss, k3_kl, token_entropy
from selftok.rl.guard import DiversityGuard
from selftok.rl.params import KLEstimator, PolicyKind, PromptMix, RLParams
from selftok.rl.realism import RealismPenalty
from selftok.rl.selection import BestWeights, Validate
from selftok.tokenizer.checkpoint import latest_checkpoint, load_checkpoint, roll_back_to, save_checkpoint
from selftok.tokenizer.train import lr_factor
from selftok.vlm.generate import generate_images, sampling_logits
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


def policy_logprobs(lm: PreTrainedModel, tokenizer: VLMTokenizer, captions: Sequence[Sequence[int]], codes: torch.Tensor,
                    sampling: SamplingParams, policy: PolicyKind) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs [N, K] of the drawn codes under the trained policy, and the conditional logits [N, K, C]."""
    guided = policy == "guided" and sampling.cfg_scale != 1.0
    n = len(captions)
    rows = [*captions, *([[]] * n)] if guided else list(captions)
    logits = visual_logits(lm, tokenizer, rows, torch.cat([codes, codes]) if guided else codes)
    cond = logits[:n]
    if policy == "conditional":
        return logprobs(cond, codes), cond
    drawn = sampling_logits(cond, logits[n:] if guided else None, sampling.cfg_scale, sampling.temperature,
                            sampling.top_k, sampling.min_p, keep=codes.to(cond.device))
    return logprobs(drawn, codes), cond


def diversity(codes: torch.Tensor, features: torch.Tensor, images: torch.Tensor, group_size: int) -> dict[str, float]:
    """Within groups: distinct code sequences, the spread of evaluator features, and the per-pixel
    variance of the images (0-1 scale). Collapse shows here; the pixel spread also shows a group of
    near-copies whose codes differ and whose off-distribution features still scatter."""
    groups = codes.view(-1, group_size, codes.shape[1])
    distinct = sum(len({tuple(row.tolist()) for row in group}) for group in groups) / codes.shape[0]
    spread = features.view(-1, group_size, features.shape[1]).var(dim=1, correction=0).sum(-1).mean()
    pixels = (to_uint8(images).float() / 255).view(-1, group_size, *images.shape[1:]).var(dim=1, correction=0).mean()
    return {"distinct_codes": distinct, "feature_spread": float(spread), "pixel_spread": float(pixels)}


@dataclass
class RLResult:
    steps: int  # the step of the weights the run ends with
    resumed_from: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    collapsed_at: int | None = None  # the step at which the diversity guard stopped the run
    collapse: str | None = None  # what the guard saw
    validation: list[dict[str, Any]] = field(default_factory=list)  # carry-over scores by step (selftok.rl.selection)
    selected: int | None = None  # set when rl.select: best_val kept an earlier step's weights than the run reached


class Scored(NamedTuple):
    reward: torch.Tensor  # [N]
    correct: list[bool]
    extra: list[int] | None = None  # objects drawn beyond those asked (None: not counted)
    realism: torch.Tensor | None = None  # [N] k-NN distance ratio to real renders (None: not measured)


RewardFn = Callable[[Sequence[Record], torch.Tensor], Scored]


def evaluator_reward(evaluator: SceneEvaluator, penalize_extra: bool = False, realism: RealismPenalty | None = None) -> RewardFn:
    """The benchmark's judge as a reward: partial credit per sub-check (with ``penalize_extra``, also
    one against objects nobody asked for), whether fully correct, and the extra objects; with
    ``realism``, less its penalty for images far from real renders."""

    def reward(rows: Sequence[Record], images: torch.Tensor) -> Scored:
        judgements = judge_images(rows, images, evaluator)
        shaped = torch.tensor([j.shaped_reward(penalize_extra) for j in judgements])
        ratio = None
        if realism is not None:
            ratio = realism.ratio(evaluator.features(images))
            shaped = shaped - realism.penalty(ratio)
        return Scored(shaped, [j.correct for j in judgements], [j.extra for j in judgements], ratio)

    return reward


@dataclass
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
    validate: Validate | None = None  # scores of the policy on prompts set aside from training (rl.val_fraction)


def pretraining_loss(task: VLMTask, batch_size: int, seed: int) -> Callable[[int], torch.Tensor]:
    """The pretraining objective on ``batch_size`` random training sequences per RL step (PPO-ptx).
    The draw derives from (seed, step), so a resumed run sees the batches an uninterrupted one would."""

    def loss(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        index = torch.randint(len(task.captions), (batch_size,), generator=generator)
        return task.loss(task.module, index, generator)[0]

    return loss


def draw_prompts(prompts: Sequence[Record], n: int, rng: random.Random, mix: PromptMix) -> list[Record]:
    """The prompts of one RL step. ``balanced``: categories in turn (each round shuffled), a
    random prompt of each, so every category gets the same share of updates, as it has the same
    weight in the benchmark's overall score; ``uniform``: n distinct prompts, categories in
    proportion to the prompt set (the default set is 82% color_attr)."""
    if mix == "uniform":
        return rng.sample(list(prompts), min(n, len(prompts)))
    by_tag: dict[str, list[Record]] = {}
    for record in prompts:
        by_tag.setdefault(record["tag"], []).append(record)
    tags = sorted(by_tag)
    order: list[str] = []
    while len(order) < n:
        order += rng.sample(tags, len(tags))
    return [rng.choice(by_tag[tag]) for tag in order[:n]]


def train_grpo(
    run: RLRun,
    params: RLParams,
    checkpoints: Path,
    on_log: Callable[[int, dict[str, Any]], None] | None = None,
    on_samples: Callable[[int, torch.Tensor], None] | None = None,
) -> RLResult:
    lm, tokenizer, s = run.lm, run.tokenizer, run.sampling
    reference = copy.deepcopy(lm).eval().requires_grad_(False) if params.beta > 0 else None
    optimizer = torch.optim.AdamW(lm.parameters(), lr=params.lr, weight_decay=params.weight_decay, betas=(0.9, 0.95))
    guard = DiversityGuard.from_params(params, realism=run.real_features is not None)
    start, end, extra = 0, params.steps, {}
    latest = latest_checkpoint(checkpoints)
    if latest is not None:
        start, state, extra = load_checkpoint(latest, optimizer)
        lm.load_state_dict(state)
        guard.references = dict(extra.get("guard_references", {}))
        log.info("rl: resumed from %s (step %d)", latest, start)
    keep = params.guard_window // params.checkpoint_every + 2 if guard.active else 1  # one from before the window
    if latest is None and guard.active:  # the guard always has a checkpoint to fall back to
        save_checkpoint(checkpoints, 0, lm.state_dict(), optimizer, {"seed": run.seed})
    started = time.perf_counter()
    result = RLResult(params.steps, start, 0.0, collapsed_at=extra.get("collapsed_at"), collapse=extra.get("collapse"))
    if result.collapse:  # a run the guard stopped stays stopped, with the weights it kept
        log.warning("rl: %s was kept after a collapse at step %s (%s)", latest, result.collapsed_at, result.collapse)
        result.steps = end = start
    best = BestWeights.open(checkpoints / VALIDATION, start, params.select_margin) if run.validate is not None else None

    def validate(step: int) -> None:
        assert run.validate is not None and best is not None
        lm.eval()
        scores = run.validate()
        best.add(step, scores, lm.state_dict())
        if on_log:
            on_log(step, {"val": scores})
        log.info("rl: step %d, carry-over validation %s", step, " ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    if best is not None and not best.history:  # a fresh run: the pretrained policy is a candidate too
        validate(start)
    for step in tqdm(range(start, end), initial=start, total=params.steps, desc="rl"):
        for group in optimizer.param_groups:
            group["lr"] = params.lr * lr_factor(step, params.steps, params.warmup_steps, params.lr_decay)
        rng = random.Random(f"{run.seed}/rl/{step}")
        records = draw_prompts(run.prompts, params.prompts_per_step, rng, params.prompt_mix)
        rows = [r for r in records for _ in range(params.group_size)]
        lm.eval()
        codes = generate_images(lm, tokenizer, [r["prompt"] for r in records], params.group_size, s.cfg_scale,
                                s.temperature, s.top_k, run.seed * 100_003 + step, s.batch_size, min_p=s.min_p)
        images = run.decode(codes)
        scored = run.reward(rows, images)
        advantages = group_advantages(scored.reward, params.group_size, params.advantage_eps)
        captions = tokenizer.encode_text([r["prompt"] for r in rows])
        with torch.no_grad():
            ref_logits = visual_logits(reference, tokenizer, captions, codes) if reference else None
            ref_logp = logprobs(ref_logits, codes) if ref_logits is not None else None
            old_logp = policy_logprobs(lm, tokenizer, captions, codes, s, params.policy)[0] if params.updates_per_batch > 1 else None
        lm.train()
        for _ in range(params.updates_per_batch):
            logp, logits = policy_logprobs(lm, tokenizer, captions, codes, s, params.policy)
            cond_logp = logp if params.policy == "conditional" else logprobs(logits, codes)
            kl = _kl(params.kl_estimator, logits, cond_logp, ref_logits, ref_logp)
            parts = grpo_loss(logp, old_logp if old_logp is not None else logp.detach(), kl, advantages.to(logp.device),
                              params.beta, params.clip)
            ptx = run.ptx(step) if run.ptx is not None and params.ptx_coef > 0 else None
            loss = parts.loss if ptx is None else parts.loss + params.ptx_coef * ptx
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(lm.parameters(), params.grad_clip)
            optimizer.step()
        entropy = token_entropy(logits.detach()).mean(0)
        features = run.features(images)
        logs: dict[str, Any] = {
            "reward": float(scored.reward.mean()),
            "correct": sum(scored.correct) / len(scored.correct),
            **({"extra_objects": sum(scored.extra) / len(scored.extra)} if scored.extra is not None else {}),
            **({"realism_ratio": float(scored.realism.mean())} if scored.realism is not None else {}),
            "loss": float(loss.detach()),
            **({"ptx_loss": float(ptx.detach())} if ptx is not None else {}),
            "kl": float(parts.kl),
            **({"kl_exact": float(exact_kl(logits.detach(), ref_logits).mean())} if ref_logits is not None else {}),
            "lr": optimizer.param_groups[0]["lr"],
            "clipped_fraction": float(parts.clipped_fraction),
            "grad_norm": float(grad_norm),
            "entropy_first_token": float(entropy[0]),
            "entropy_last_token": float(entropy[-1]),
            "entropy_mean": float(entropy.mean()),
            "reward_by_category": _by_category(rows, scored.reward),
            **diversity(codes, features, images, params.group_size),
            **({"frechet_to_real": frechet_distance(features, run.real_features)} if run.real_features is not None else {}),
        }
        result.history.append({k: v for k, v in logs.items() if isinstance(v, float)})
        if on_log and (step + 1) % params.log_every == 0:
            on_log(step + 1, logs | {"entropy_by_position": {f"v{i + 1:03d}": float(e) for i, e in enumerate(entropy)}})
        if on_samples and ((step + 1) % params.sample_every == 0 or step == start):
            on_samples(step + 1, images[: 4 * params.group_size])  # the groups of the first 4 prompts
        result.collapse = guard.check(result.history)
        if result.collapse:  # fall back to the newest checkpoint at or before the start of the window that showed it
            last_healthy = latest_checkpoint(checkpoints, at_most=step + 1 - params.guard_window)
            if last_healthy is None:
                raise RuntimeError(f"{checkpoints}: the diversity guard found no checkpoint to fall back to")
            result.steps, state, _ = load_checkpoint(last_healthy, optimizer)
            lm.load_state_dict(state)
            result.collapsed_at = step + 1
            log.warning("rl: collapse at step %d (%s); keeping step %d", step + 1, result.collapse, result.steps)
            roll_back_to(last_healthy, {"collapsed_at": result.collapsed_at, "collapse": result.collapse})  # a rerun stays stopped
            if best is not None:  # scores of the discarded steps go; the weights kept are a candidate
                best.truncate(result.steps)
                if not best.validated(result.steps):
                    validate(result.steps)
            break
        if best is not None and ((step + 1) % params.val_every == 0 or step + 1 == params.steps):
            validate(step + 1)
        if (step + 1) % params.checkpoint_every == 0 or step + 1 == params.steps:
            save_checkpoint(checkpoints, step + 1, lm.state_dict(), optimizer,
                            {"seed": run.seed, "guard_references": guard.references}, keep)
    if best is not None:
        result.validation = best.history
        chosen = best.best(at_most=result.steps)
        if params.select == "best_val" and chosen is not None and chosen["step"] != result.steps:
            lm.load_state_dict(best.load(chosen["step"]))
            result.steps = result.selected = chosen["step"]
            log.warning("rl: keeping step %d, the best on carry-over validation (%s %.3f)", chosen["step"], best.key, chosen[best.key])
    result.seconds = time.perf_counter() - started
    return result


def _kl(estimator: KLEstimator, logits: torch.Tensor, logp: torch.Tensor, ref_logits: torch.Tensor | None,
        ref_logp: torch.Tensor | None) -> torch.Tensor | None:
    """Per-token KL(pi || ref) [N, K] by the chosen estimator, None without a reference."""
    if ref_logits is None or ref_logp is None:
        return None
    return exact_kl(logits, ref_logits) if estimator == "exact" else k3_kl(logp, ref_logp)


def _by_category(rows: Sequence[Record], rewards: torch.Tensor) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row, value in zip(rows, rewards.tolist(), strict=True):
        sums.setdefault(row["tag"], []).append(value)
    return {tag: sum(v) / len(v) for tag, v in sorted(sums.items())}
