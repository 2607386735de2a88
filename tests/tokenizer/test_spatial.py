"""The spatial control tokenizer: grid and raster order, prefix masking, save/load, training and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizer_helpers import color_images, tiny_config

from selftok.data.dataset import to_unit
from selftok.tokenizer.arch import TokenizerConfig
from selftok.tokenizer.model import SelftokTokenizer
from selftok.tokenizer.registry import load_tokenizer
from selftok.tokenizer.spatial import Grid, SpatialConfig, SpatialTokenizer, cell_grid, from_cells, to_cells
from selftok.tokenizer.spatial_params import SpatialParams
from selftok.tokenizer.spatial_train import train_spatial
from selftok.training.checkpoint import latest_checkpoint
from selftok.training.loop import Callbacks

ARCH = {
    "num_tokens": 8,
    "codebook_size": 16,
    "code_dim": 4,
    "encoder_width": 16,
    "encoder_depth": 1,
    "decoder_width": 16,
    "decoder_depth": 2,
    "heads": 2,
}  # 8x8 images: 2 x 4 cells of 4 x 2 px


def tiny_model(seed: int = 0, perturb: bool = True) -> SpatialTokenizer:
    """A tiny model; ``perturb`` randomises the zero-initialised layers so every path carries signal."""
    torch.manual_seed(seed)
    model = SpatialTokenizer(SpatialConfig(image_size=8, mlp_ratio=2.0, **ARCH))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def tiny_spatial_params(**overrides: object) -> SpatialParams:
    return SpatialParams(
        **{
            **ARCH,
            "batch_size": 16,
            "steps": 4,
            "warmup_steps": 2,
            "checkpoint_every": 2,
            "log_every": 1,
            "eval_every": 1000,
            **overrides,
        }
    )


def test_grid_is_the_squarest_tiling_and_bad_k_fails_clearly() -> None:
    assert cell_grid(32, 32) == Grid(rows=4, cols=8, cell_h=8, cell_w=4)
    assert cell_grid(16, 32) == Grid(4, 4, 8, 8)
    assert cell_grid(8, 8) == Grid(2, 4, 4, 2)
    for k, size in [(7, 32), (5, 32), (32, 12)]:
        with pytest.raises(ValueError, match="does not tile"):
            cell_grid(k, size)
    with pytest.raises(ValueError, match="num_tokens=7 does not tile a 32x32 image"):
        SpatialConfig(num_tokens=7)
    with pytest.raises(ValueError, match="does not tile"):
        SpatialParams(num_tokens=12).architecture(32)


def test_cells_are_in_raster_order() -> None:
    grid = cell_grid(32, 32)
    x = torch.randn(2, 3, 32, 32)
    cells = to_cells(x, grid)
    assert cells.shape == (2, 32, 3 * 8 * 4)
    assert torch.equal(cells[:, 0], x[:, :, :8, :4].flatten(1))  # top-left
    assert torch.equal(cells[:, 1], x[:, :, :8, 4:8].flatten(1))  # its right neighbour
    assert torch.equal(cells[:, 8], x[:, :, 8:16, :4].flatten(1))  # first cell of the second row
    assert torch.equal(from_cells(cells, grid), x)
    with pytest.raises(ValueError, match="expects 32x32"):
        to_cells(torch.randn(1, 3, 16, 16), grid)


def test_shapes_and_the_public_api() -> None:
    model = tiny_model()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    codes = model.encode(images)
    assert codes.shape == (3, 8) and codes.dtype == torch.long
    assert int(codes.max()) < 16 and model.quantizer.codebook.shape == (16, 4)
    assert model.tokens(codes).shape == (3, 8, 4)
    out = model.render(codes)
    assert out.shape == (3, 3, 8, 8) and out.abs().max() <= 1
    assert torch.equal(model.decode(codes, steps=5, seed=3, guidance=2.0), out)  # no diffusion: same pass
    assert model.renderer is model.decoder
    assert model.predict((images[:2] * 127.5 + 127.5).round().byte().numpy()).shape == (2, 8)
    assert model.predict(codes.numpy(), mode="render").dtype.name == "uint8"
    with pytest.raises(ValueError, match="prefix"):
        model.render(codes, prefix=9)


def test_quantizer_round_trip() -> None:
    model = tiny_model()
    codes = torch.randint(0, 16, (5, 8))
    assert torch.equal(model.quantizer.nearest(model.tokens(codes)), codes)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    quant = model.quantizer(model.encoder(images))
    assert torch.equal(quant.codes, model.encode(images))
    assert torch.allclose(quant.quantized, model.tokens(quant.codes), atol=1e-6)


def test_the_top_left_cell_lives_in_the_first_code() -> None:
    model = tiny_model()
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    changed = x.clone()
    changed[:, :, :4, :2] = -changed[:, :, :4, :2]  # cell 0 only
    delta = (model.encoder(changed) - model.encoder(x)).norm(dim=-1)  # [B, K]
    assert delta[:, 0].mean() > 3 * delta[:, 1:].mean(), delta.mean(0)
    # and on the way back: code 0 drives mostly the top-left pixels
    codes = model.encode(x)
    other = codes.clone()
    other[:, 0] = (other[:, 0] + 1) % 16
    diff = (
        model.decoder(model.tokens(other), torch.ones(16, 8, dtype=torch.bool))
        - model.decoder(model.tokens(codes), torch.ones(16, 8, dtype=torch.bool))
    ).abs()
    assert diff[:, :, :4, :2].mean() > 3 * diff[:, :, 4:, :].mean()


def test_a_prefix_ignores_the_codes_after_it() -> None:
    model = tiny_model()
    codes = torch.randint(0, 16, (4, 8))
    other = codes.clone()
    other[:, 3:] = torch.randint(0, 16, (4, 5))
    assert torch.equal(model.render(other, prefix=3), model.render(codes, prefix=3))
    assert not torch.equal(model.render(other), model.render(codes))
    assert torch.equal(model.render(codes, prefix=0), model.render(other, prefix=0))


def test_save_and_load_give_identical_outputs(tmp_path: Path) -> None:
    model = tiny_model()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    codes = model.encode(images)
    model.save_pretrained(tmp_path / "spatial")
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.bin"))
    loaded = SpatialTokenizer.from_pretrained(tmp_path / "spatial")
    assert loaded.config == model.config
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.render(codes), model.render(codes))
    assert torch.equal(loaded.render(codes, prefix=2), model.render(codes, prefix=2))
    # the registry tells the two kinds apart; Selftok folders load as before
    assert isinstance(load_tokenizer(tmp_path / "spatial"), SpatialTokenizer)
    SelftokTokenizer(TokenizerConfig(**tiny_config())).save_pretrained(tmp_path / "selftok")
    assert isinstance(load_tokenizer(tmp_path / "selftok"), SelftokTokenizer)
    with pytest.raises(ValueError, match="selftok-tokenizer/1"):
        SelftokTokenizer.from_pretrained(tmp_path / "spatial")
    with pytest.raises(ValueError, match="selftok-spatial/1"):
        SpatialTokenizer.from_pretrained(tmp_path / "selftok")
    with pytest.raises(ValueError, match="no renderer"):
        load_tokenizer(tmp_path / "spatial", renderer=tmp_path / "spatial")


def test_training_lowers_the_pixel_loss(tmp_path: Path) -> None:
    images = color_images(128)
    x = to_unit(images[:64])

    def mse(model: SpatialTokenizer, prefix: int | None = None) -> float:
        return float((model.render(model.encode(x), prefix=prefix) - x).pow(2).mean())

    params = tiny_spatial_params(
        steps=40, lr=1e-2, batch_size=32, warmup_steps=5, checkpoint_every=1000, log_every=10, ema_decay=0.9
    )
    model = tiny_model(perturb=False)
    before = mse(model)
    logged: list[int] = []
    result = train_spatial(
        model,
        images,
        params,
        seed=0,
        checkpoints=tmp_path / "ckpt",
        callbacks=Callbacks(on_log=lambda step, logs: logged.append(step)),
    )
    assert logged == [10, 20, 30, 40] and result.history[-1]["pixel_mse"] < result.history[0]["pixel_mse"]
    assert not model.training
    after, no_tokens = mse(model), mse(model, prefix=0)
    assert after < 0.6 * before, (before, after)
    assert after < 0.8 * no_tokens, (after, no_tokens)  # the codes carry the image


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    images = color_images(64)
    params = tiny_spatial_params(steps=5, checkpoint_every=2)

    def kill_at_3(done: int, logs: dict[str, float]) -> None:
        if done == 3:
            raise Killed

    reference = tiny_model(perturb=False)
    train_spatial(reference, images, params, seed=0, checkpoints=tmp_path / "ref")
    with pytest.raises(Killed):
        train_spatial(
            tiny_model(perturb=False), images, params, seed=0, checkpoints=tmp_path / "run", callbacks=Callbacks(on_log=kill_at_3)
        )
    assert latest_checkpoint(tmp_path / "run").name == "step_0000002"
    resumed = tiny_model(perturb=False)
    result = train_spatial(resumed, images, params, seed=0, checkpoints=tmp_path / "run")
    assert result.resumed_from == 2 and result.steps == 5
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
