"""`selftok run --dry-run`: what a params file would train, how big each model is, and what it costs.

Everything is computed offline, before any GPU is rented: models are built on torch's meta device
(shapes, no memory) from their configs, so parameter counts are exact; FLOPs are counted by
torch's FlopCounterMode on one sample's forward (backward = 2 x forward); activations are the
outputs every leaf module keeps for the backward pass. A hub model whose config cannot be read
here is built from the profile's ``expected`` block, and checked against the real config when
one is readable. Memory per GPU: fp32 weights, gradients and AdamW moments (16 bytes per trained
parameter, sharded over the GPUs under fsdp), 4 bytes per frozen parameter, and the local batch's
bf16 activations. GPU hours: model FLOPs / (peak x utilisation).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selftok.config import ComputeParams, Params
from selftok.errors import ConfigError

TRAIN_STATE_BYTES, FROZEN_BYTES, ACTIVATION_BYTES = 16, 4, 2  # fp32 weights+grads+AdamW; fp32 frozen; bf16 activations
LOGIT_BYTES = 10  # a logit in bf16, its fp32 copy for the loss and its gradient


@dataclass(kw_only=True)
class ModelPlan:
    """One model's row of the plan: its size and what its stage does with it."""

    stage: str
    model: str
    params: int
    trained: int  # parameters the stage updates (0: inference only)
    tokens: int  # sequence length (or latent positions) of one sample
    samples: int  # samples the stage runs through the model (steps x batch when training)
    batch: int  # global batch
    forward_flops: float  # one sample's forward
    activations: float  # bytes one sample keeps for the backward pass
    source: str  # where the architecture came from
    base: int = 0  # a pretrained backbone's own parameters, before its vocabulary grew

    @property
    def flops(self) -> float:
        return (3.0 if self.trained else 1.0) * self.forward_flops * self.samples

    def memory_gb(self, compute: ComputeParams) -> float:
        """Estimated peak memory per GPU."""
        shards = compute.gpus if compute.sharding == "fsdp" and self.trained else 1
        states = self.trained * TRAIN_STATE_BYTES / shards + (self.params - self.trained) * FROZEN_BYTES
        local = max(1, -(-self.batch // compute.gpus))
        return (states + local * self.activations) / 1e9

    def gpu_hours(self, compute: ComputeParams) -> float:
        return self.flops / (compute.peak_tflops * 1e12 * compute.utilisation) / 3600


# --- measuring a module on the meta device -------------------------------------------------------
def meta(build: Callable[[], Any]) -> Any:
    """``build()`` with every tensor it creates on the meta device (shapes only)."""
    with torch.device("meta"):
        return build()


def count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


@contextlib.contextmanager
def kept_outputs(module: nn.Module) -> Iterator[list[int]]:
    """Elements of every leaf module's output during the block: what autograd keeps for backward."""
    sizes: list[int] = []

    def hook(_: nn.Module, __: Any, out: Any) -> None:
        sizes.extend(o.numel() for o in (out if isinstance(out, tuple) else (out,)) if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        yield sizes
    finally:
        for handle in handles:
            handle.remove()


def measure(module: nn.Module, run: Callable[[], Any]) -> tuple[float, float]:
    """(forward FLOPs, activation bytes) of ``run()`` (one sample through ``module``, on meta)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, kept_outputs(module) as sizes, torch.no_grad():
        run()
    return float(counter.get_total_flops()), float(sum(sizes) * ACTIVATION_BYTES)


# --- the models ----------------------------------------------------------------------------------
def vae_config(params: Params) -> tuple[dict[str, Any], str]:
    """The VAE's diffusers config: read from the pretrained one when possible, else its ``expected``."""
    from diffusers import AutoencoderKL

    vae = params.vae
    if vae.pretrained is None:
        from selftok.tokenizer.vae import build_vae

        return dict(meta(lambda: build_vae(vae, params.data.image_size)).config), "vae (own, trained)"
    try:
        local = Path(vae.pretrained).is_dir()
        with warnings.catch_warnings():  # the hub client's deprecation notes, not ours
            warnings.simplefilter("ignore")
            config = dict(AutoencoderKL.load_config(vae.pretrained, subfolder=vae.subfolder, local_files_only=local))
    except (OSError, ValueError):
        if vae.expected is None:
            raise ConfigError(f"vae.pretrained {vae.pretrained!r}: its config cannot be read here; state its shape in vae.expected") from None
        return expected_vae(vae.expected), "vae.expected"
    wrong = vae.expected.mismatches(_Attrs(config)) if vae.expected is not None else []
    if wrong:
        raise ConfigError(f"vae.pretrained {vae.pretrained!r}: " + "; ".join(wrong))
    return config, "vae.pretrained config"


class _Attrs:
    """A config dict read by attribute, as the ``mismatches`` checks read real configs."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)


def expected_vae(expected: Any) -> dict[str, Any]:
    blocks = len(expected.block_out_channels)
    return {"down_block_types": ("DownEncoderBlock2D",) * blocks, "up_block_types": ("UpDecoderBlock2D",) * blocks,
            "block_out_channels": tuple(expected.block_out_channels), "layers_per_block": expected.layers_per_block,
            "latent_channels": expected.latent_channels, "norm_num_groups": expected.norm_num_groups,
            "use_quant_conv": expected.use_quant_conv, "use_post_quant_conv": expected.use_quant_conv}


def plan_vae(params: Params, config: dict[str, Any], source: str) -> tuple[ModelPlan, Any]:
    """train_vae: fit the statistics of a pretrained VAE (inference), or train our own."""
    from diffusers import AutoencoderKL

    p, size = params.vae, params.data.image_size
    vae = meta(lambda: AutoencoderKL.from_config({k: v for k, v in config.items() if not k.startswith("_")}))
    image = torch.zeros(1, 3, size, size, device="meta")
    flops, acts = measure(vae, lambda: vae.decode(vae.encode(image).latent_dist.mode()))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent = (size // factor) ** 2
    shared = {"stage": "train_vae", "params": count(vae), "tokens": latent, "batch": p.batch_size, "forward_flops": flops,
              "activations": acts, "source": source}
    if p.pretrained is not None:
        return ModelPlan(model="VAE (pretrained, fit latent statistics)", trained=0, samples=p.scaling_images + p.val_images, **shared), vae
    return ModelPlan(model="VAE", trained=count(vae), samples=p.steps * p.batch_size, **shared), vae


def plan_tokenizer(params: Params, vae: Any) -> list[ModelPlan]:
    """train_tokenizer (encoder, quantizer, diffusion decoder on frozen VAE latents) and train_renderer."""
    from selftok.tokenizer.decoder import MMDiT
    from selftok.tokenizer.encoder import Encoder
    from selftok.tokenizer.quantizer import Quantizer
    from selftok.tokenizer.renderer import Renderer

    tok, rend = params.tokenizer, params.renderer
    config = tok.architecture(params.data.image_size)
    channels, side = vae.config.latent_channels, params.data.image_size // 2 ** (len(vae.config.block_out_channels) - 1)
    encoder, decoder = meta(lambda: Encoder(channels, side, config)), meta(lambda: MMDiT(channels, side, config))
    quantizer, renderer = meta(lambda: Quantizer(config.encoder_width, config)), meta(lambda: Renderer(channels, side, config))
    k, d = config.num_tokens, config.code_dim
    x = torch.zeros(1, channels, side, side, device="meta")
    tokens, t, visible = torch.zeros(1, k, d, device="meta"), torch.zeros(1, device="meta"), torch.ones(1, k, dtype=torch.bool, device="meta")
    enc_flops, enc_acts = measure(encoder, lambda: encoder(x))
    dec_flops, dec_acts = measure(decoder, lambda: decoder(x, t, tokens, visible))
    ren_flops, ren_acts = measure(renderer, lambda: renderer(tokens))
    lookup = 2.0 * k * config.codebook_size * d  # nearest code of every token
    seq = (side // config.encoder_patch) ** 2 + k
    trained = count(encoder, decoder, quantizer)
    source = f"tokenizer size {tok.size} + overrides"
    return [
        ModelPlan(stage="train_tokenizer", model="Selftok tokenizer (encoder + quantizer + decoder)", params=trained + count(vae),
                  trained=trained, tokens=seq, samples=tok.steps * tok.batch_size, batch=tok.batch_size,
                  forward_flops=enc_flops + dec_flops + lookup, activations=enc_acts + dec_acts, source=source),
        ModelPlan(stage="train_renderer", model="one-step renderer (+ frozen tokenizer and VAE)",
                  params=count(renderer) + trained + count(vae), trained=count(renderer), tokens=seq,
                  samples=rend.steps * rend.batch_size, batch=rend.batch_size, forward_flops=ren_flops, activations=ren_acts,
                  source=source),
    ]


def lm_config(params: Params) -> tuple[Any, int, str]:
    """(transformers config with the grown vocabulary, the base model's parameter count, source)."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from selftok.vlm.arch import llama_config
    from selftok.vlm.vocab import SPECIALS

    vlm, codes = params.vlm, params.tokenizer.codebook_size
    if vlm.init_from is None:
        config = llama_config(vlm.size, vlm.text_vocab_size + codes, 0, 1, 2, vlm.hidden_size, vlm.layers, vlm.heads)
        return config, count(meta(lambda: AutoModelForCausalLM.from_config(config))), f"vlm size {vlm.size}"
    try:
        config, source = AutoConfig.from_pretrained(vlm.init_from, local_files_only=Path(vlm.init_from).is_dir()), "vlm.init_from config"
    except (OSError, ValueError):
        if vlm.expected is None:
            raise ConfigError(f"vlm.init_from {vlm.init_from!r}: its config cannot be read here; state its architecture in vlm.expected") from None
        e = vlm.expected
        config = LlamaConfig(vocab_size=e.vocab_size, hidden_size=e.hidden_size, intermediate_size=e.intermediate_size,
                             num_hidden_layers=e.layers, num_attention_heads=e.heads, num_key_value_heads=e.kv_heads,
                             tie_word_embeddings=e.tie_word_embeddings, max_position_embeddings=e.max_positions)
        source = "vlm.expected"
    wrong = vlm.expected.mismatches(config) if vlm.expected is not None and source != "vlm.expected" else []
    if wrong:
        raise ConfigError(f"vlm.init_from {vlm.init_from!r}: " + "; ".join(wrong))
    base = count(meta(lambda: AutoModelForCausalLM.from_config(config)))
    config.vocab_size += len(SPECIALS) - 2 + codes  # its own BOS and EOS kept; the other specials and the codes added
    return config, base, source


def plan_vlm(params: Params) -> ModelPlan:
    """pretrain_vlm@selftok: next-token training on [BOS][T2I] caption [BOV] K codes [EOV][EOS]."""
    from transformers import AutoModelForCausalLM

    vlm = params.vlm
    config, base, source = lm_config(params)
    lm = meta(lambda: AutoModelForCausalLM.from_config(config))
    seq = params.tokenizer.num_tokens + vlm.sampling.caption_max_tokens + 5
    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    flops, acts = measure(lm, lambda: lm(input_ids=ids))
    layers, width = config.num_hidden_layers, config.hidden_size
    if vlm.gradient_checkpointing:  # only each layer's input stays, plus one layer's internals while it is recomputed
        logits = seq * config.vocab_size * ACTIVATION_BYTES
        acts = layers * seq * width * ACTIVATION_BYTES + (acts - logits) / layers + logits
    acts += seq * config.vocab_size * (LOGIT_BYTES - ACTIVATION_BYTES)
    name = f"VLM ({_human(base)} backbone, vocabulary {config.vocab_size})"
    return ModelPlan(stage="pretrain_vlm@selftok", model=name, params=count(lm), trained=count(lm), tokens=seq,
                     samples=vlm.steps * vlm.batch_size, batch=vlm.batch_size, forward_flops=flops, activations=acts,
                     source=source, base=base)


def plan(params: Params) -> list[ModelPlan]:
    """Every model the params would train or fit, in stage order."""
    config, source = vae_config(params)
    vae_row, vae = plan_vae(params, config, source)
    return [vae_row, *plan_tokenizer(params, vae), plan_vlm(params)]


def plan_rows(params: Params) -> list[dict[str, Any]]:
    """The plan as plain data, with each row's FLOPs, memory per GPU and GPU hours (for JSON and tests)."""
    compute = params.compute or ComputeParams(gpus=1, sharding="ddp")
    rows = []
    for row in plan(params):
        rows.append({**asdict(row), "flops": row.flops, "memory_gb_per_gpu": row.memory_gb(compute),
                     "gpu_hours": row.gpu_hours(compute), "fits": row.memory_gb(compute) <= compute.gpu_memory_gb})
    return rows


# --- the printed plan ----------------------------------------------------------------------------
COLUMNS = ("stage", "model", "params", "trained", "tokens", "samples", "tokens seen", "FLOPs", "GB/GPU", "GPU h", "from")


def _human(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def format_plan(params: Params, stages: list[str]) -> str:
    """The stage plan and a table of the models, their cost and whether they fit a GPU."""
    compute = params.compute or ComputeParams(gpus=1, sharding="ddp")
    rows = plan_rows(params)
    planned = {r["stage"] for r in rows}
    lines = ["stages (dvc.yaml order; * = a model trained or fitted, costed below):",
             "  " + "  ".join(f"{s}{'*' if s in planned else ''}" for s in stages), ""]
    cells = [[r["stage"], r["model"], _human(r["params"]), _human(r["trained"]), str(r["tokens"]), _human(r["samples"]),
              _human(r["samples"] * r["tokens"]),
              f"{r['flops']:.3g}", f"{r['memory_gb_per_gpu']:.3g}" + ("" if r["fits"] else " (!)"),
              f"{r['gpu_hours']:.4g}", r["source"]] for r in rows]
    widths = [max(len(c[i]) for c in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [list(COLUMNS), *cells]]
    total = sum(r["gpu_hours"] for r in rows)
    gpus = f"{compute.gpus} GPU" + ("s" if compute.gpus != 1 else "")
    lines += ["", f"compute: {gpus} x {compute.gpu_memory_gb:g} GB, {compute.sharding}, "
              f"{compute.peak_tflops:g} TFLOP/s peak at {compute.utilisation:.0%}: {total:,.0f} GPU hours, "
              f"{total / compute.gpus:,.1f} h wall in all (tokenize, RL and evaluation not costed)",
              *(["(!) = over one GPU's memory"] if not all(r["fits"] for r in rows) else []), _launch(compute)]
    return "\n".join(lines) + "\n"


def _launch(compute: ComputeParams, per_machine: int = 8) -> str:
    """How each training stage would start on the planned GPUs (accelerate owns the processes)."""
    machines = -(-compute.gpus // per_machine)
    fsdp = " --use_fsdp --fsdp_sharding_strategy FULL_SHARD" if compute.sharding == "fsdp" else ""
    return (f"launch (per machine): accelerate launch --multi_gpu --num_machines {machines} --num_processes {compute.gpus}{fsdp} "
            "-m selftok stage NAME")
