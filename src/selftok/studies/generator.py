"""Where the generator loses what the tokens can carry: the diagnosis of a pretrained VLM.

Four measurements of one arm's VLM on the project it was trained in:

- ``loss_by_position``: the VLM's next-token loss (nats) at each visual position, teacher-forced on
  caption -> image sequences of train and val scenes, beside ``code_entropy``, the entropy of the
  codes used at that position over the training set (what a model that ignores the caption and the
  earlier tokens would pay). A position where the two are close is one the VLM has not learnt.
- ``completion``: val scenes' first k codes taken from their real encoding, the rest sampled from
  the VLM under its caption; each image compared with the real render by the scene evaluator
  (shape, colour and place agreement). Where shape agreement climbs with k is where the VLM, and
  not the tokenizer, loses the shape; k = K is the tokenizer's own ceiling.
- ``copying``: how close generated code sequences sit to their nearest training sequence, beside
  how close real val sequences sit (a generator that copies sits closer than fresh data does).
- ``decoders`` (Selftok only): the benchmark scored with the one-step renderer and with the
  diffusion decoder. The renderer regresses to the mean image of what the codes leave open, so
  codes the VLM got partly wrong may look like blobs through it and like shapes through the decoder.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from selftok.config import Params
from selftok.data.codes import CodeSet, load_codes
from selftok.data.dataset import load_split, to_uint8
from selftok.eval.evaluator import SceneEvaluator
from selftok.eval.fidelity import reconstruction_agreement
from selftok.paths import EVALUATOR
from selftok.stages.arms import ARMS, SELFTOK
from selftok.studies.benchmark import Benchmark
from selftok.studies.rl_seeds import mean_se
from selftok.tokenizer.metrics import batched
from selftok.vlm.decode import render_fn
from selftok.vlm.model import SelftokVLM
from selftok.vlm.sequences import collate, layout

Row = dict[str, Any]
DECODER_SET = "rl_test"  # the headline prompt set (the paper's protocol)


@dataclass(frozen=True)
class Diagnosis:
    """What to measure: ``arm``'s VLM in ``root`` on ``scenes`` val (and as many train) scenes,
    completions and benchmark scores under ``seeds`` sampling seeds."""

    root: Path
    out: Path
    arm: str = SELFTOK.name
    scenes: int = 256
    seeds: int = 2
    prefixes: tuple[int, ...] = (0, 8, 16, 32, 48)


@torch.no_grad()
def loss_by_position(vlm: SelftokVLM, codes: CodeSet, batch_size: int = 64) -> list[float]:
    """Mean next-token loss (nats) of visual positions 1..K on caption -> image sequences."""
    tk, k = vlm.tokenizer, vlm.tokenizer.num_tokens
    captions = tk.encode_text(codes.captions)
    total = torch.zeros(k)
    vlm.lm.eval()
    for start in range(0, len(codes), batch_size):
        rows = range(start, min(start + batch_size, len(codes)))
        batch = collate([layout(tk, "t2i", captions[i], codes.codes[i].tolist()) for i in rows], tk.pad_id)
        logits = vlm.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
        labels = batch.labels[:, 1:]
        visual = tk.is_visual(labels)
        per_token = F.cross_entropy(logits[visual], labels[visual], reduction="none")
        total += per_token.view(len(rows), k).sum(0)  # each row holds exactly K visual targets, in order
    return (total / len(codes)).tolist()


def code_entropy(codes: torch.Tensor, num_codes: int) -> list[float]:
    """Entropy (nats) of the codes used at each position, over ``codes`` [N, K]."""
    counts = torch.zeros(codes.shape[1], num_codes).scatter_add_(1, codes.T, torch.ones_like(codes.T, dtype=torch.float))
    p = counts / counts.sum(1, keepdim=True)
    return (-(p * p.clamp_min(1e-12).log()).sum(1)).tolist()


def complete(vlm: SelftokVLM, captions: list[str], prefix: torch.Tensor, seed: int) -> torch.Tensor:
    """Codes [B, K]: ``prefix`` [B, k] kept, the rest drawn with the VLM's saved sampling recipe."""
    if prefix.shape[1] == vlm.tokenizer.num_tokens:
        return prefix
    return vlm.generate(captions, 1, seed=seed, prefix=prefix)


def completion_curve(vlm: SelftokVLM, decode: Callable[[torch.Tensor], torch.Tensor], evaluator: SceneEvaluator,
                     real: torch.Tensor, codes: CodeSet, prefixes: tuple[int, ...], seeds: int) -> list[Row]:
    """Agreement of completed codes' images with the real renders (uint8), per prefix length k (mean over seeds)."""
    rows = []
    for k in (*[p for p in prefixes if p < vlm.tokenizer.num_tokens], vlm.tokenizer.num_tokens):
        draws = []
        for seed in range(seeds if k < vlm.tokenizer.num_tokens else 1):
            completed = complete(vlm, codes.captions, codes.codes[:, :k], seed)
            draws.append(reconstruction_agreement(evaluator, real, to_uint8(batched(decode, completed, 256))))
        row = {key: sum(d[key] for d in draws) / len(draws) for key in draws[0]}
        row["shape_given_place"] = row["shape_agreement"] / max(row["position_agreement"], 1e-9)
        rows.append({"k": k, **row})
    return rows


def nearest_distance(queries: torch.Tensor, pool: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """For each query sequence [Q, K], the share of positions where its nearest ``pool`` sequence differs."""
    best = []
    for start in range(0, len(queries), chunk):
        differs = (queries[start : start + chunk, None, :] != pool[None]).sum(-1)
        best.append(differs.min(1).values / queries.shape[1])
    return torch.cat(best)


def copying(generated: torch.Tensor, real: torch.Tensor, train: torch.Tensor) -> Row:
    """Distance of generated and of real val sequences to their nearest training sequence."""
    gen, fresh = nearest_distance(generated, train), nearest_distance(real, train)
    return {"generated_nearest": gen.mean().item(), "real_nearest": fresh.mean().item(),
            "generated_exact_copies": (gen == 0).float().mean().item(), "real_exact_copies": (fresh == 0).float().mean().item()}


def decoders(root: Path, params: Params, model: Path, seeds: int, steps: int) -> Row:
    """``rl_test`` benchmark overall through the renderer and through the diffusion decoder, paired
    on the same sampling seeds (the codes drawn are the same; only the decode differs)."""
    bench = Benchmark.load(root, params, SELFTOK)
    tokenizer = SELFTOK.load_tokenizer(root)
    diffusion = dataclasses.replace(bench, decode=lambda codes: tokenizer.decode(codes, steps=steps))
    out: Row = {"prompts": DECODER_SET}
    for name, b in {"renderer": bench, "diffusion": diffusion}.items():
        out[name] = [score["overall"] for score in b.score_seeds(model, DECODER_SET, range(seeds))]
        out[f"{name}_overall"] = mean_se(out[name])
    out["diffusion_gain"] = mean_se([d - r for d, r in zip(out["diffusion"], out["renderer"], strict=True)])
    return out


def head(codes: CodeSet, n: int) -> CodeSet:
    """The first ``n`` scenes of a code set."""
    return CodeSet(codes.codes[:n], codes.captions[:n], codes.metadata[:n], codes.keys[:n])


def run(study: Diagnosis, params: Params, echo: Callable[[str], None]) -> Row:
    """All four measurements of ``study.arm``'s VLM; written to ``study.out`` as JSON."""
    arm = ARMS[study.arm]
    vlm = SelftokVLM.from_pretrained(study.root / arm.vlm)
    train, val = load_codes(study.root, "train", folder=arm.codes), load_codes(study.root, "val", study.scenes, folder=arm.codes)
    images = load_split(study.root, "val", study.scenes)
    if images.keys != val.keys:
        raise ValueError(f"{study.root}: val images and codes are not the same scenes; rerun `dvc repro tokenize`")
    evaluator = SceneEvaluator.load(study.root / EVALUATOR)
    decode = render_fn(arm.load_tokenizer(study.root, with_renderer=True))
    report: Row = {"arm": study.arm, "scenes": len(val), "seeds": study.seeds}
    echo(f"loss by position on {len(val)} train and val scenes")
    report["loss_by_position"] = {"train": loss_by_position(vlm, head(train, len(val))), "val": loss_by_position(vlm, val)}
    report["code_entropy"] = code_entropy(train.codes, vlm.tokenizer.num_codes)
    echo(f"completions of real prefixes k in {study.prefixes}")
    report["completion"] = completion_curve(vlm, decode, evaluator, images.images, val, study.prefixes, study.seeds)
    echo("copying of training sequences")
    report["copying"] = copying(complete(vlm, val.captions, val.codes[:, :0], 0), val.codes, train.codes)
    if arm is SELFTOK:
        echo("benchmark through the renderer and through the diffusion decoder")
        report["decoders"] = decoders(study.root, params, study.root / arm.vlm, study.seeds, params.tokenizer.eval.decode_steps)
    study.out.parent.mkdir(parents=True, exist_ok=True)
    study.out.write_text(json.dumps(report, indent=1) + "\n")
    return report


def summary_lines(report: Row) -> list[str]:
    """The diagnosis as a few readable lines: loss against entropy in position bands, the completion curve."""
    k = len(report["code_entropy"])
    bands = [(0, 8), (8, 16), (16, 32), (32, k)] if k >= 32 else [(0, k)]
    lines = [f"{report['arm']}: {report['scenes']} val scenes, {report['seeds']} seeds",
             "positions   code entropy   VLM loss train   VLM loss val"]
    series = (report["code_entropy"], report["loss_by_position"]["train"], report["loss_by_position"]["val"])
    for a, b in bands:
        means = [sum(values[a:b]) / (b - a) for values in series]
        lines.append(f"{a + 1:>3}-{b:<3}      {means[0]:6.3f}         {means[1]:6.3f}          {means[2]:6.3f}")
    lines.append("k (real)   shape   colour   place   shape|place")
    lines += [f"{r['k']:>3}        {r['shape_agreement']:.3f}   {r['color_agreement']:.3f}    {r['position_agreement']:.3f}   "
              f"{r['shape_given_place']:.3f}" for r in report["completion"]]
    c = report["copying"]
    lines.append(f"nearest training sequence differs in {c['generated_nearest']:.3f} of positions (real val: {c['real_nearest']:.3f})")
    if "decoders" in report:
        d = report["decoders"]
        gain = d["diffusion_gain"]
        lines.append(f"{d['prompts']} overall: renderer {d['renderer_overall']['mean']:.3f}, diffusion {d['diffusion_overall']['mean']:.3f} "
                     f"(gain {gain['mean']:+.3f} +- {gain['se'] or 0.0:.3f} over {len(d['renderer'])} sampling seeds)")
    return lines
