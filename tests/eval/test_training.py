from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from scene_fixtures import scene_set
from test_evaluator import raw_from_targets

from selftok.data.dataset import to_unit
from selftok.data.scenes import COLORS
from selftok.eval.evaluator import EvaluatorConfig, SceneEvaluator, objects_from_metadata, targets_for
from selftok.eval.params import Corruption, EvaluatorParams
from selftok.eval.training import ColourLayers, augment, corrupt, degrade, train_evaluator

TINY = {"grid": 4, "width": 8, "epochs": 4, "batch_size": 32, "checkpoint_every": 2}


def test_corruptions_are_seeded_and_off_at_zero() -> None:
    images = scene_set("val", 8).images
    spec = EvaluatorParams().degrade
    assert torch.equal(degrade(images, spec, 1), degrade(images, spec, 1))
    assert not torch.equal(degrade(images, spec, 1), degrade(images, spec, 2))
    assert (degrade(images, spec, 1) - to_unit(images)).abs().mean() > 0.02
    off = Corruption(blur_sigma=0, noise_std=0, patch_noise_std=0, color_shift=0, contrast=0)
    assert torch.allclose(corrupt(to_unit(images), off, torch.Generator(), False), to_unit(images), atol=1e-5)


def test_augmentation_keeps_targets_true_to_the_image() -> None:
    data = scene_set("train", 32)
    config = EvaluatorConfig()
    layers = ColourLayers.from_set(data, config)
    index = torch.arange(len(data))
    identity = torch.arange(len(config.colors)).expand(len(data), -1)
    assert (layers.paint(index, data.images, identity) - data.images.float()).abs().max() < 1.0
    params = EvaluatorParams(augment_prob=0.0, recolor_prob=1.0)
    x, target = augment(index, data.images, targets_for(data.metadata, config), layers, params, torch.Generator().manual_seed(0))
    model = SceneEvaluator(config)
    palette = {name: torch.tensor(rgb, dtype=torch.float32) for name, rgb in COLORS.items()}
    pixels = (x + 1) * 127.5
    flips = 0
    for n, (parsed, meta) in enumerate(zip(model.decode(raw_from_targets(target, config)), data.metadata, strict=True)):
        truth = objects_from_metadata(meta)
        mirrored = [(o.shape, 32 - o.center[0], o.center[1]) for o in truth]
        straight = [(o.shape, *o.center) for o in truth]
        got = sorted((o.shape, round(o.center[0], 3), round(o.center[1], 3)) for o in parsed)
        flipped = got == sorted((s, round(x_, 3), round(y, 3)) for s, x_, y in mirrored)
        assert flipped or got == sorted((s, round(x_, 3), round(y, 3)) for s, x_, y in straight)
        flips += flipped
        for obj in parsed:  # the label names the colour the object is painted in
            cx, cy = int(obj.center[0]), int(obj.center[1])
            rgb = pixels[n, :, cy - 1 : cy + 2, cx - 1 : cx + 2].mean(dim=(1, 2))
            assert min(palette, key=lambda c: float((palette[c] - rgb).norm())) == obj.color
    assert 0 < flips < len(data)


def test_training_learns_and_resumes_exactly(tmp_path: Path) -> None:
    train, val = scene_set("train", 64, image_size=16), scene_set("val", 16, image_size=16)
    params = EvaluatorParams(**TINY)
    reference, history = train_evaluator(train, val, params, seed=3)
    assert len(history) == 4 and history[-1]["loss_total"] < history[0]["loss_total"]

    def crash(row: dict[str, float], epoch: int) -> None:
        if epoch == 3:
            raise KeyboardInterrupt

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(KeyboardInterrupt):
        train_evaluator(train, val, params, seed=3, checkpoint_dir=checkpoints, log_metrics=crash)
    assert [p.name for p in checkpoints.iterdir()] == ["step_0000002"]
    resumed, resumed_history = train_evaluator(train, val, params, seed=3, checkpoint_dir=checkpoints)
    assert [p.name for p in checkpoints.iterdir()] == ["step_0000004"]
    assert [r["loss_total"] for r in resumed_history] == [r["loss_total"] for r in history]
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    again, _ = train_evaluator(train, val, params, seed=3, checkpoint_dir=checkpoints, log_metrics=crash)  # no epoch runs
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in reference.state_dict().items())
    _, other = train_evaluator(train, val, params.model_copy(update={"lr": 1e-3}), seed=3, checkpoint_dir=checkpoints)
    assert [r["loss_total"] for r in other] != [r["loss_total"] for r in history]


@pytest.fixture
def tf32_flags() -> Iterator[tuple[bool, bool]]:
    """torch's TF32 flags as they were, put back after the test (monkeypatch cannot restore them)."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield flags
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def test_precision_keys_are_a_no_op_on_cpu_and_autocast_on_a_gpu(monkeypatch: pytest.MonkeyPatch, tf32_flags: tuple[bool, bool]) -> None:
    from contextlib import nullcontext

    from selftok.training.precision import autocast

    params = EvaluatorParams(mixed_precision="bf16", tf32=not tf32_flags[0])
    assert isinstance(autocast(params, "cpu"), nullcontext) and isinstance(autocast(EvaluatorParams(), "cpu"), nullcontext)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32_flags

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "autocast", lambda device, dtype: (device, dtype))  # what a GPU would enter
    assert autocast(EvaluatorParams(tf32=not tf32_flags[0]), "cuda") == ("cuda", torch.bfloat16)  # absent mixed_precision: bf16
    assert torch.backends.cuda.matmul.allow_tf32 == torch.backends.cudnn.allow_tf32 == (not tf32_flags[0])
    assert autocast(EvaluatorParams(mixed_precision="fp16"), "cuda:0") == ("cuda", torch.float16)
    assert isinstance(autocast(EvaluatorParams(mixed_precision="no"), "cuda"), nullcontext)


def test_the_evaluator_loop_takes_the_precision_keys_and_a_cpu_run_ignores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import selftok.eval.training as training

    train, val = scene_set("train", 32, image_size=16), scene_set("val", 8, image_size=16)
    plain = EvaluatorParams(**{**TINY, "epochs": 1, "checkpoint_every": 1})
    reference, _ = train_evaluator(train, val, plain, seed=3)
    seen = []
    real = training.autocast
    monkeypatch.setattr(training, "autocast", lambda params, device: seen.append((params.mixed_precision, params.tf32, str(device))) or real(params, device))
    model, _ = train_evaluator(train, val, plain.model_copy(update={"mixed_precision": "bf16", "tf32": True}), seed=3)
    assert seen and set(seen) == {("bf16", True, "cpu")}
    assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), model.state_dict().values(), strict=True))
