"""The paper profile checks and plans offline: `check-params --profile paper`, `run --dry-run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.vlm.pretrained_fixtures import save_tiny_llama
from typer.testing import CliRunner

from selftok.cli import app
from selftok.commands.plan import plan_rows
from selftok.config import merged, parse_params, profile_data
from selftok.errors import ConfigError
from selftok.vlm.vocab import SPECIALS

ROOT = Path(__file__).resolve().parents[1]
LLAMA3_8B = 8.03e9  # Meta's Llama-3-8B: 8,030,261,248 parameters


def paper(**overrides: Any) -> dict[str, Any]:
    return merged(profile_data(ROOT, "paper"), overrides)


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, Any]]:
    return {row["stage"]: row for row in plan_rows(parse_params(paper()))}


def test_check_params_and_the_dry_run_pass_on_the_paper_profile() -> None:
    runner = CliRunner()
    checked = runner.invoke(app, ["check-params", "--profile", "paper", "--root", str(ROOT)])
    assert checked.exit_code == 0, checked.output
    planned = runner.invoke(app, ["run", "--dry-run", "--profile", "paper", "--root", str(ROOT)])
    assert planned.exit_code == 0, planned.output
    for text in ("train_tokenizer*", "pretrain_vlm@selftok", "8.03B backbone", "vlm.expected", "vae.expected", "GPU hours"):
        assert text in planned.output


def test_the_paper_plan_counts_an_8b_backbone_k512_and_sd3_latents(rows: dict[str, dict[str, Any]]) -> None:
    vlm, tokenizer, vae = rows["pretrain_vlm@selftok"], rows["train_tokenizer"], rows["train_vae"]
    assert abs(vlm["base"] / 8.0e9 - 1) < 0.01 and abs(vlm["base"] / LLAMA3_8B - 1) < 0.001
    grown = (len(SPECIALS) - 2 + 32768) * 4096 * 2  # new rows of the embedding and the untied head
    assert vlm["params"] == vlm["trained"] == vlm["base"] + grown
    assert vlm["tokens"] == 512 + 64 + 5  # [BOS][T2I] caption [BOV] K codes [EOV][EOS]
    assert 0.9 < vlm["flops"] / (6 * vlm["params"] * vlm["tokens"] * vlm["samples"]) < 1.05  # ~6 N T
    assert vlm["fits"] and 10 < vlm["memory_gb_per_gpu"] < 80  # sharded over 64 GPUs, checkpointed
    assert tokenizer["tokens"] == (256 // 8 // 2) ** 2 + 512 and 1e9 < tokenizer["trained"] < 4e9
    assert vae["trained"] == 0 and 80e6 < vae["params"] < 90e6 and vae["tokens"] == 32 * 32
    assert vlm["gpu_hours"] == pytest.approx(vlm["flops"] / (989e12 * 0.4) / 3600)


def test_a_param_that_cannot_fit_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"tokenizer\.allocation \[16, 48, 72, 184, 100\] sums to 420, not tokenizer\.num_tokens 512"):
        parse_params(paper(tokenizer={"allocation": [16, 48, 72, 184, 100]}))
    with pytest.raises(ConfigError, match=r"tokenizer\.allocation .* is not the custom schedule's \[16, 48, 72, 184, 192\]"):
        parse_params(paper(tokenizer={"allocation": [48, 16, 72, 184, 192]}))
    with pytest.raises(ConfigError, match=r"data\.image_size 260 is not divisible by the VAE's downsampling 8"):
        parse_params(paper(data={"image_size": 260}))
    with pytest.raises(ConfigError, match=r"tokenizer\.encoder_patch 3 does not divide the 32x32 latent grid"):
        parse_params(paper(tokenizer={"encoder_patch": 3}))


def test_a_readable_config_is_checked_against_the_expected_one(tmp_path: Path) -> None:
    folder = save_tiny_llama(tmp_path / "llama", ["a red circle", "two blue squares"])
    with pytest.raises(ConfigError, match=r"vlm\.expected\.hidden_size 4096 != 32"):
        plan_rows(parse_params(paper(vlm={"init_from": str(folder)})))
    data = paper(vlm={"init_from": str(folder)})
    del data["vlm"]["expected"]
    row = next(r for r in plan_rows(parse_params(data)) if r["stage"] == "pretrain_vlm@selftok")
    assert row["source"] == "vlm.init_from config" and row["base"] < 1e6
