"""`selftok study sampling`'s comparison of two models: gains paired on the sampling seeds."""

import json
from pathlib import Path

import pytest

from selftok.config import profile_yaml
from selftok.errors import ConfigError
from selftok.studies.sampling import Sweep, means_table, paired_gains, plan, read_sweep, report_gains

ROOT = Path(__file__).resolve().parents[2]


def row(seed: int, prompts: str, overall: float, recipe: str = "cfg_scale=3") -> dict:
    return {"recipe": recipe, "seed": seed, "prompts": prompts, "overall": overall, "single_object": 2 * overall}


def test_gains_are_paired_on_the_seeds_both_sweeps_scored() -> None:
    new = [row(0, "compositional", 0.20), row(1, "compositional", 0.10), row(2, "compositional", 0.90), row(0, "rl_train", 0.30)]
    old = [row(0, "compositional", 0.15), row(1, "compositional", 0.08), row(0, "rl_train", 0.30), row(0, "compositional", 0.5, recipe="cfg_scale=7")]
    held, train = paired_gains(new, old)
    assert (held["prompts"], held["seeds"]) == ("compositional", [0, 1])  # seed 2 has no partner and is left out
    assert held["gain_points"] == pytest.approx(3.5)  # diffs +5 and +2
    assert held["gain_se_points"] == pytest.approx(1.5)  # sd 2.12 / sqrt(2)
    assert (held["overall"], held["against"]) == (pytest.approx(0.15), pytest.approx(0.115))
    assert held["category_gain_points"] == {"single_object": pytest.approx(7.0)}
    assert (train["gain_points"], train["gain_se_points"]) == (pytest.approx(0.0), None)  # one seed: no error


def test_nothing_in_common_and_a_wrong_file_are_named(tmp_path: Path) -> None:
    against = tmp_path / "small.json"
    with pytest.raises(ConfigError, match="no recipe, seed and prompt set in common"):
        report_gains(paired_gains([row(0, "compositional", 0.2)], [row(0, "compositional", 0.2, recipe="cfg_scale=7")]), tmp_path / "x.json", against)
    against.write_text(json.dumps({"overall": 0.2}))
    with pytest.raises(ConfigError, match=r"small\.json: not a sweep's JSON"):
        read_sweep(against)
    with pytest.raises(ConfigError, match=r"missing\.json: not a sweep's JSON"):
        read_sweep(tmp_path / "missing.json")


def test_the_report_writes_what_it_shows(tmp_path: Path) -> None:
    gains = paired_gains([row(0, "compositional", 0.2), row(1, "compositional", 0.3)], [row(0, "compositional", 0.1), row(1, "compositional", 0.1)])
    table = report_gains(gains, tmp_path / "big.paired.json", tmp_path / "small.json")
    assert json.loads((tmp_path / "big.paired.json").read_text()) == gains
    assert "| cfg_scale=3 | compositional | 2 | 0.250 | 0.100 | +15.0 ± 5.0 | +30.0 | - | - | - | - | - |" in table
    means = means_table([row(0, "compositional", 0.2), row(1, "compositional", 0.4), row(0, "rl_train", 0.1), row(0, "rl_test", 0.5)],
                        ["cfg_scale=3"])
    assert means.splitlines() == ["| recipe | rl_train | rl_test | compositional |", "|---|---|---|---|",
                                  "| cfg_scale=3 | 0.100 | 0.500 | 0.300 |"]


def test_a_bad_recipe_or_an_unrelated_sweep_fails_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(profile_yaml(ROOT, "smoke"))
    with pytest.raises(ConfigError, match="guidance"):
        plan(Sweep(tmp_path, ["cfg_scale=3", "guidance=7"], tmp_path / "out.json"))
    unrelated = tmp_path / "unrelated.json"
    unrelated.write_text(json.dumps([row(0, "compositional", 0.0, recipe="cfg_scale=9")]))
    with pytest.raises(ConfigError, match=r"unrelated\.json: no recipe, seed and prompt set in common"):
        plan(Sweep(tmp_path, ["cfg_scale=3"], tmp_path / "out.json", against=unrelated))
    recipes, baseline = plan(Sweep(tmp_path, ["cfg_scale=3,min_p=0.1"], tmp_path / "out.json", seeds=2))
    first, second = recipes["cfg_scale=3,min_p=0.1"]
    assert (first.vlm.sampling.cfg_scale, first.vlm.sampling.min_p, baseline) == (3, 0.1, None)
    assert second.vlm.sampling.seed == first.vlm.sampling.seed + 1
