"""`selftok study rl-seeds` without models: the recipe check, the summary and table of finished seeds, the CLI's seeds."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selftok.cli import app
from selftok.config import profile_yaml
from selftok.data.scenes import CATEGORIES
from selftok.errors import ConfigError
from selftok.studies import rl_seeds
from selftok.studies.rl_seeds import SeedsStudy, finished, graph_files, summarize

ROOT = Path(__file__).resolve().parents[2]


def result(seed: int, overall: float, pretrained: float, sets: list[str]) -> dict:
    rl = {"overall": overall, "overall_se": 0.02, "overall_strict": overall / 2, **dict.fromkeys(CATEGORIES, overall),
          "diversity": {"feature_spread": 1.5, "distinct_codes": 0.9}}
    stage = {"rl": {"collapsed_at": None, "steps": 3, "reward_first5": 0.1, "reward_last5": 0.2, "kl_last5": 0.5}}
    return {"seed": seed, "sets": sets, "gain": {"overall": overall - pretrained}, "rl": rl, "stage": stage,
            "overall_by_seed": [overall, overall + 0.01]}


def test_summary_and_table_of_the_finished_seeds(tmp_path: Path) -> None:
    pretrained = {"overall": 0.10, "overall_se": 0.02, "diversity_reference": {"feature_spread": 2.0},
                  "data_ceiling": {"overall": 0.8}, "overall_by_seed": [0.10, 0.12]}
    (tmp_path / "pretrained.json").write_text(json.dumps(pretrained))
    for seed, overall in ((10, 0.16), (2, 0.12)):
        folder = tmp_path / "g24" / f"seed_{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(result(seed, overall, 0.10, ["rl.group_size=24"])))
    summary = summarize(tmp_path / "g24")
    assert summary["seeds"] == [2, 10]  # numeric order, not the folders' text order
    assert summary["gain_points"] == pytest.approx([2.0, 6.0]) and summary["mean"] == pytest.approx(4.0)
    table = (tmp_path / "g24" / "table.md").read_text().splitlines()
    assert len(table) == 2 + 2 and "overall (gain; data 0.800)" in table[0]
    assert table[3].startswith("| 10 | 0.160 (+6.0 ± 2.8) |") and "0.165 (+5.5 ± 0.5, 2 seeds)" in table[3]
    study = SeedsStudy(tmp_path, "g24", [2], ["rl.group_size=16"], out=tmp_path)
    with pytest.raises(ConfigError, match="other --set values"):
        finished(study, 2)
    assert not finished(study, 3)


def test_a_bad_override_or_arm_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(profile_yaml(ROOT, "smoke"))
    with pytest.raises(ConfigError, match=r"rl\.group_size"):
        SeedsStudy(tmp_path, "bad", [0], ["rl.group_size=1"]).recipe()
    with pytest.raises(ConfigError, match="known arms"):
        SeedsStudy(tmp_path, "bad", [0], arm="pixels").recipe()
    raw, params = SeedsStudy(tmp_path, "ok", [0], ["rl.group_size=4"]).recipe()
    assert raw["rl"]["group_size"] == params.rl.group_size == 4


def test_the_command_takes_seeds_as_the_script_did(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[SeedsStudy] = []
    monkeypatch.setattr(rl_seeds, "run", lambda study, report: seen.append(study) or {"seeds": study.seeds})
    command = ["study", "rl-seeds", "--root", str(tmp_path), "--name", "g24", "--seeds", "0", "1", "2",
               "--set", "rl.group_size=24", "--set", "rl.beta=0.01", "--sample-seeds", "4", "--threads", "1"]
    out = CliRunner().invoke(app, command)
    assert out.exit_code == 0, out.output
    assert (seen[0].seeds, seen[0].sets, seen[0].sample_seeds, seen[0].root) == ([0, 1, 2], ["rl.group_size=24", "rl.beta=0.01"], 4, tmp_path)
    bad = CliRunner().invoke(app, ["study", "rl-seeds", "--name", "x", "--seeds", "0", "one"])
    assert bad.exit_code == 1 and "--seeds takes integers" in bad.output


def test_a_seed_folder_gets_the_files_its_stage_graph_reads(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text("vars:\n  - src/selftok/paths.py\n  - extra.yaml:SECTION\n  - {inline: 1}\nstages: {}\n")
    assert graph_files(tmp_path) == ["dvc.yaml", "src/selftok/paths.py", "extra.yaml"]
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "dvc.yaml").write_text("stages: {}\n")
    assert graph_files(tmp_path / "plain") == ["dvc.yaml"]
