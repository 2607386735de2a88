"""Checkpoint folders: how many are kept, and finding the newest one up to a step."""

from pathlib import Path

import torch

from selftok.training.checkpoint import latest_checkpoint, load_checkpoint, roll_back_to, save_checkpoint


def test_keep_prunes_all_but_the_newest_and_at_most_finds_an_earlier_one(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (0, 10, 20, 30):
        save_checkpoint(tmp_path, step, model.state_dict(), optimizer, {"tag": step}, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000010", "step_0000020", "step_0000030"]
    assert latest_checkpoint(tmp_path).name == "step_0000030"
    assert latest_checkpoint(tmp_path, at_most=29).name == "step_0000020"
    assert latest_checkpoint(tmp_path, at_most=9) is None
    step, _, extra = load_checkpoint(latest_checkpoint(tmp_path, at_most=15), optimizer)
    assert step == 10 and extra["tag"] == 10

    save_checkpoint(tmp_path, 40, model.state_dict(), optimizer, {})  # the default keeps only the new one
    assert [p.name for p in tmp_path.iterdir()] == ["step_0000040"]


def test_roll_back_to_drops_newer_checkpoints_and_marks_the_kept_one_without_rewriting_it(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, model.state_dict(), optimizer, {"seed": 1}, keep=3)
    kept = tmp_path / "step_0000020"
    weights = (kept / "model.safetensors").read_bytes()
    roll_back_to(kept, {"collapsed_at": 34})
    assert latest_checkpoint(tmp_path) == kept and (tmp_path / "step_0000010").is_dir()
    step, _, extra = load_checkpoint(kept, optimizer)
    assert (step, extra["seed"], extra["collapsed_at"]) == (20, 1, 34)
    assert (kept / "model.safetensors").read_bytes() == weights and not list(kept.glob("*.tmp"))
