"""`selftok study rl-seeds` without models: the recipe check, the summary and table of finished seeds, the CLI's seeds."""

import json
import math
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from selftok.cli import app
from selftok.config import profile_yaml
from selftok.data.scenes import CATEGORIES
from selftok.errors import ConfigError
from selftok.studies import rl_seeds
from selftok.studies.benchmark import load_judge
from selftok.studies.rl_seeds import (
    SeedsStudy,
    bars,
    finished,
    graph_files,
    mean_se,
    paired_points,
    seed_gain,
    summarize,
)

ROOT = Path(__file__).resolve().parents[2]


def draw(overall: float, strict: float, judge: float | None = None) -> dict:
    """One sampling seed's summary of one model on one set (``judge``: the second judge's overall, strict half of it)."""
    judged = overall if judge is None else judge
    return {"overall": overall, "overall_se": 0.02, "overall_strict": strict, "overall_strict_se": 0.02,
            **dict.fromkeys(CATEGORIES, overall), "extra_objects": 0.1, "frechet_to_real": 3.0,
            "diversity": {"feature_spread": 1.5, "distinct_codes": 0.9},
            "judge": {"overall": judged, "overall_se": 0.02, "overall_strict": judged / 2, "overall_strict_se": 0.02}}


PRETRAINED = {"rl_test": [draw(0.10, 0.05), draw(0.12, 0.07)], "compositional": [draw(0.30, 0.20), draw(0.32, 0.20)],
              "rl_train": [draw(0.20, 0.10)]}


def result(seed: int, lift: float, sets: list[str]) -> dict:
    """A finished seed whose RL model scores ``lift`` above the pretrained one on every draw of rl_test."""
    scores = {"rl_test": [draw(p["overall"] + lift, p["overall_strict"] + lift) for p in PRETRAINED["rl_test"]],
              "compositional": [draw(p["overall"] + lift - 0.18, p["overall_strict"]) for p in PRETRAINED["compositional"]],
              "rl_train": [draw(0.30, 0.20)]}
    stage = {"rl": {"collapsed_at": None, "steps": 3, "reward_first5": 0.1, "reward_last5": 0.2, "kl_last5": 0.5}}
    return {"seed": seed, "sets": sets, "scores": scores, "stage": stage,
            "pretrained_rl_train": {"scores": PRETRAINED["rl_train"], "data_ceiling": {"overall": 0.9, "overall_strict": 0.6}},
            "gain": {name: seed_gain(scores[name], PRETRAINED[name]) for name in scores}}


def test_gains_are_paired_per_sampling_seed_then_averaged() -> None:
    rl, pretrained = [draw(0.30, 0.20, judge=0.25), draw(0.20, 0.10, judge=0.25), draw(0.9, 0.9)], [draw(0.10, 0.05), draw(0.12, 0.06)]
    assert paired_points(rl, pretrained, "overall") == pytest.approx([20.0, 8.0])  # only the seeds both were scored under
    gain = seed_gain(rl[:2], pretrained)
    assert gain["overall"] == pytest.approx(14.0) and gain["overall_strict"] == pytest.approx(9.5)
    assert gain["overall_se"] == pytest.approx(statistics.stdev([20.0, 8.0]) / math.sqrt(2))  # over the paired differences
    assert gain["judge_overall"] == pytest.approx(statistics.fmean([15.0, 13.0]))  # the second judge on the same images
    assert gain["by_sample_seed"]["overall_strict"] == pytest.approx([15.0, 4.0]) and gain["sample_seeds"] == 2
    single = seed_gain(rl[:1], pretrained[:1])  # one draw: the two draws' own sampling errors
    assert single["overall_se"] == pytest.approx(math.hypot(0.02, 0.02) * 100)


def test_mean_and_standard_error_over_rl_seeds() -> None:
    assert mean_se([10.0, 14.0, 18.0]) == {"mean": pytest.approx(14.0), "se": pytest.approx(4.0 / math.sqrt(3)),
                                           "per_seed": [10.0, 14.0, 18.0]}
    assert mean_se([3.0])["se"] is None and mean_se([])["mean"] is None


def gains(overall: list[float], strict: list[float], judge: list[float]) -> dict:
    return {"overall": mean_se(overall), "overall_strict": mean_se(strict), "judge_overall": mean_se(judge)}


def test_the_protocol_bars() -> None:
    met = bars("rl_test", gains([16.0, 18.0], [11.0, 12.0], [14.0, 15.0]))
    assert met == {"overall_gain_at_least_15": True, "strict_gain_at_least_10": True, "every_seed_strict_at_least_5": True,
                   "judges_agree": True, "met": True}
    missed = bars("rl_test", gains([10.0, 30.0], [4.0, 20.0], [26.0, 26.0]))
    assert missed["overall_gain_at_least_15"] and missed["strict_gain_at_least_10"]
    assert not missed["every_seed_strict_at_least_5"] and not missed["judges_agree"] and not missed["met"]  # one seed; 6 points apart
    assert not bars("rl_test", gains([1.0, 2.0], [1.0, 2.0], [-1.0, -1.0]))["judges_agree"]  # within 5 points, other sign
    assert bars("compositional", gains([-1.0, -3.0], [0.0, 0.0], [0.0, 0.0])) == {"no_loss_beyond_2se": True, "met": True}
    assert bars("compositional", gains([-4.0, -4.2], [0.0, 0.0], [0.0, 0.0]))["no_loss_beyond_2se"] is False  # se 0.1
    assert bars("compositional", gains([-4.0], [0.0], [0.0]))["no_loss_beyond_2se"] is None  # one seed: no error to judge by
    assert bars("rl_train", gains([1.0, 2.0], [1.0, 2.0], [1.0, 2.0])) == {}


def test_summary_and_table_of_the_finished_seeds(tmp_path: Path) -> None:
    pretrained = {"sets": {name: {"scores": PRETRAINED[name], "diversity_reference": {"feature_spread": 2.0},
                                  "data_ceiling": {"overall": 0.8, "overall_strict": 0.7}} for name in ("rl_test", "compositional")}}
    (tmp_path / "pretrained.json").write_text(json.dumps(pretrained))
    for seed, lift in ((10, 0.20), (2, 0.16)):
        folder = tmp_path / "g24" / f"seed_{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(result(seed, lift, ["rl.group_size=24"])))
    summary = summarize(tmp_path / "g24")
    assert summary["seeds"] == [2, 10]  # numeric order, not the folders' text order
    headline = summary["rl_test"]
    assert headline["overall"]["per_seed"] == pytest.approx([16.0, 20.0]) and headline["overall"]["mean"] == pytest.approx(18.0)
    assert headline["overall"]["se"] == pytest.approx(2.0) and headline["judge_overall"]["mean"] == pytest.approx(18.0)
    assert headline["bars"]["met"] and summary["bars_met"] == {"rl_test": True, "compositional": True}
    compositional = summary["compositional"]["overall"]  # -2 and +2 points: no loss beyond 2 standard errors
    assert compositional["mean"] == pytest.approx(0.0) and compositional["se"] == pytest.approx(2.0)
    table = (tmp_path / "g24" / "table.md").read_text().splitlines()
    assert len(table) == 2 + 2 + 1  # header, rule, a row per seed, the mean
    assert "rl_test overall (pretrained 0.110; data 0.800)" in table[0] and "compositional strict" in table[0]
    assert "strict on RL prompts (pretrained 0.100; data 0.600)" in table[0]  # the recipe's own prompts, from its seeds
    assert table[3].startswith("| 10 | 0.310 (+20.0 ± 0.0) |") and table[4].startswith("| mean (2 seeds) | +18.0 ± 2.0 |")
    assert "| +18.0 / +9.0 (bars met) |" in table[4]
    study = SeedsStudy(tmp_path, "g24", [2], ["rl.group_size=16"], out=tmp_path)
    with pytest.raises(ConfigError, match="other --set values"):
        finished(study, 2)
    assert not finished(study, 3)


class FakeBench:
    """Scores every model 0.5 on every draw, recording what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, list[int]]] = []

    def score_seeds(self, model: Path, prompts: str, seeds: range) -> list[dict]:
        self.asked.append((model.name, prompts, list(seeds)))
        return [draw(0.5, 0.4) for _ in seeds]


def test_a_seed_done_before_under_fewer_sampling_seeds_is_topped_up(tmp_path: Path) -> None:
    folder = tmp_path / "g24" / "seed_3"
    folder.mkdir(parents=True)
    done = result(3, 0.2, [])
    done["scores"]["rl_test"] = done["scores"]["rl_test"][:1]  # scored under one sampling seed
    done["gain"]["rl_test"] = seed_gain(done["scores"]["rl_test"], PRETRAINED["rl_test"])
    (folder / "result.json").write_text(json.dumps(done))
    baseline = {"sets": {name: {"scores": scores} for name, scores in PRETRAINED.items()}}
    bench, study = FakeBench(), SeedsStudy(tmp_path, "g24", [3], out=tmp_path, sample_seeds=2)
    assert rl_seeds.top_up(study, 3, bench, baseline) == 1  # type: ignore[arg-type]
    assert [a for a in bench.asked if a[2]] == [("vlm_rl", "rl_test", [1])]  # only the missing draw, of the seed's RL model
    gain = json.loads((folder / "result.json").read_text())["gain"]["rl_test"]
    assert gain["sample_seeds"] == 2 and gain["by_sample_seed"]["overall"] == pytest.approx([20.0, 38.0])
    assert rl_seeds.top_up(study, 3, bench, baseline) == 0  # type: ignore[arg-type]


def test_a_missing_judge_names_its_folder_and_stage(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"models/judge: missing; the train_evaluator stage makes it"):
        load_judge(tmp_path)


def test_a_bad_override_or_arm_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(profile_yaml(ROOT, "smoke"))
    with pytest.raises(ConfigError, match=r"rl\.group_size"):
        SeedsStudy(tmp_path, "bad", [0], ["rl.group_size=1"]).recipe()
    with pytest.raises(ConfigError, match="known arms"):
        SeedsStudy(tmp_path, "bad", [0], arm="pixels").recipe()
    with pytest.raises(ConfigError, match="--sample-seeds 0"):
        SeedsStudy(tmp_path, "bad", [0], sample_seeds=0).recipe()
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
