"""The whole pipeline on the smoke profile through the Prefect flow: contract, report, registry, skipping."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file

from selftok import tracking
from selftok.config import load_params
from selftok.data.scenes import CATEGORIES
from selftok.stages.base import resolve_stages

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]
SETS = ("rl_test", "compositional")
CONTRACT = [
    "tokenizer.psnr_diffusion", "tokenizer.psnr_renderer", "tokenizer.ssim_renderer", "tokenizer.psnr_no_tokens",
    "tokenizer.active_code_fraction", "tokenizer.evaluator_fidelity", "tokenizer.shape_agreement", "evaluator.scene_accuracy",
    "comprehension.caption_accuracy",
    *[f"generation.{s}.{m}.{c}" for s in SETS for m in ("pretrained", "rl") for c in ("overall", "overall_strict", "overall_se", *CATEGORIES)],
    *[f"rl_gain.{s}.{c}" for s in SETS for c in ("overall", "overall_strict", "overall_se", "judge_overall", "judge_overall_strict")],
    *[f"generation.{s}.{m}.judge.{c}" for s in SETS for m in ("pretrained", "rl") for c in ("overall", "overall_strict")],
    "judges.agreement", *[f"judges.{s}.agreement" for s in SETS],
    *[f"data_ceiling.{s}.{c}" for s in SETS for c in ("overall", "overall_strict")],
]
# The spatial-token control arm mirrors the arm-level keys (no diffusion decoder, so no psnr_diffusion).
CONTROL = [
    *[f"control.spatial.{key}" for key in CONTRACT if not key.startswith(("evaluator.", "tokenizer.psnr_diffusion"))],
    *[f"control.spatial.rl_gain.{s}.{c}" for s in SETS for c in CATEGORIES],
]


@pytest.fixture(scope="module")
def smoke(smoke_run) -> tuple[Path, list, list]:
    """The session's smoke run (tests/conftest.py), built once and shared with the retraining tests."""
    return smoke_run


def test_every_stage_ran_once_then_skipped(smoke) -> None:
    _, first, second = smoke
    stages = list(resolve_stages(ROOT))
    assert [r["stage"] for r in first] == stages and not any(r["skipped"] for r in first)
    assert all(r["skipped"] for r in second)


def test_metrics_contract(smoke) -> None:
    project, _, _ = smoke
    metrics = tracking.flatten(json.loads((project / "metrics" / "evaluate.json").read_text()))
    missing = [key for key in CONTRACT + CONTROL if key not in metrics]
    assert not missing, missing
    for key in CONTRACT + CONTROL:
        value = metrics[key]
        assert isinstance(value, float | int), (key, value)
        if "psnr" in key:
            assert 0 < value < 100, (key, value)
        else:
            assert (-1 if "rl_gain." in key else 0) <= value <= 1, (key, value)
    nested = json.loads((project / "metrics" / "evaluate.json").read_text())
    for arm in (nested, nested["control"]["spatial"]):
        assert list(arm["tokenizer"]["prefix_psnr"]) == ["1", "2", "4", "8"]  # smoke K = 8
        pairs = {k: v for k, v in arm["tokenizer"].items() if k.startswith("shape_agreement_")}
        assert "shape_agreement_seen_pairs" in pairs and set(pairs) <= {"shape_agreement_seen_pairs", "shape_agreement_heldout_pairs"}
        assert all(0 <= v <= 1 for v in pairs.values())
        for name in SETS:
            reference, rl = arm["diversity_reference"][name], arm["generation"][name]["rl"]["diversity"]
            assert 0 < reference["distinct_codes"] <= 1 and reference["feature_spread"] > 0  # computed from real renders
            assert set(reference) == set(rl)  # measured the same way as the generations it is compared with
            ceiling, pretrained = arm["data_ceiling"][name], arm["generation"][name]["pretrained"]
            assert ceiling["overall_strict"] <= ceiling["overall"] and set(pretrained) >= set(ceiling) - {"images"}  # scored like a model
            gain = arm["rl_gain"][name]
            assert math.isclose(gain["overall_strict"], arm["generation"][name]["rl"]["overall_strict"] - pretrained["overall_strict"])
        entropy = arm["ar_probe"]["entropy_by_position"]
        assert list(entropy) == [str(i) for i in range(1, 9)] and all(0 <= e <= math.log(64) + 1e-6 for e in entropy.values())


def test_report_is_self_contained(smoke) -> None:
    project, _, _ = smoke
    index = project / "reports" / "index.html"
    text = index.read_text()
    images = sorted((project / "reports" / "images").glob("*.png"))
    assert {"reconstruction_by_prefix.png", "reconstruction_by_prefix_spatial.png",
            *[f"generation{arm}_{name}_{m}.png" for arm in ("", "_spatial") for name in SETS for m in ("pretrained", "rl")]} <= {p.name for p in images}
    for image in images:
        assert f"images/{image.name}" in text
    assert "Promotion" in text and "Reconstruction by prefix" in text and "spatial-token control" in text
    assert "<td>rl_gain.rl_test.overall</td>" in text and "Generation: compositional prompts" in text
    assert "<td>feature spread per prompt</td>" in text and "<th>real renders</th>" in text


def test_runs_nest_and_registry_has_aliases(smoke) -> None:
    project, _, _ = smoke
    mlflow.set_tracking_uri(tracking.tracking_uri(project))
    runs = mlflow.search_runs(experiment_names=["selftok-smoke"], output_format="list")
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 2
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[-1].info.run_id]
    stages = resolve_stages(ROOT)
    assert len([r for r in runs if "dvc.stage" in r.data.tags]) == len(stages)  # the second flow run made none
    assert not children or len(children) == len(stages)
    assert tracking.alias_version("selftok-vlm", "champion") is not None
    assert tracking.alias_version("selftok-vlm", "challenger") == tracking.alias_version("selftok-vlm", "champion")
    # the next challenger's gain is judged against this champion's sampling error, so it is kept in the registry
    tags = mlflow.tracking.MlflowClient().get_model_version("selftok-vlm", tracking.alias_version("selftok-vlm", "champion")).tags
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    # (0 where the smoke model scores every prompt 0 or 1: no sampling spread)
    assert float(tags["benchmark.overall_se"]) == evaluate["generation"]["rl_test"]["rl"]["overall_se"] >= 0
    assert evaluate["promotion"]["prompt_set"] == "rl_test"
    assert evaluate["promotion"]["required_gain"] is None and evaluate["promotion"]["promoted"]  # no champion before


def test_rl_keeps_the_weights_that_carried_over_best(smoke) -> None:
    """The smoke profile's RL validates on prompt groups it never trains on (steps 0, 2, 3) and keeps
    the best, where a later step must beat it by more than rl.select_margin standard errors."""
    project, _, _ = smoke
    margin = load_params(project / "params.yaml").rl.select_margin
    scores = json.loads((project / "checkpoints" / "rl" / "validation" / "history.json").read_text())
    assert [h["step"] for h in scores] == [0, 2, 3]
    assert all(0 <= h["strict_se"] <= 0.5 for h in scores)
    best = scores[0]
    for h in scores[1:]:
        if h["strict"] > best["strict"] + margin * math.hypot(h["strict_se"], best["strict_se"]):
            best = h
    metrics = json.loads((project / "metrics" / "rl_finetune.json").read_text())
    validation = metrics["validation"]
    assert (validation["best_step"], validation["strict_best"]) == (best["step"], best["strict"])
    assert validation["selected_step"] == (None if best["step"] == 3 else best["step"])
    assert metrics["rl"]["steps"] == best["step"]

    from selftok.stages.arms import SELFTOK
    from selftok.studies.rl_seeds import last_weights  # what the seed study scores where the selection passed them over
    from selftok.vlm.model import SelftokVLM

    folder = last_weights(project, SELFTOK)
    assert folder.name == "vlm_rl_step_0000003"
    last = load_file(str(project / "checkpoints" / "rl" / "step_0000003" / "model.safetensors"))
    lm = SelftokVLM.from_pretrained(folder).lm
    assert all(torch.equal(value, last[name]) for name, value in lm.state_dict().items())
    shutil.rmtree(folder)


def test_rl_seeds_study_scores_each_seed_on_the_evaluate_benchmark(smoke, tmp_path: Path) -> None:
    """`selftok study rl-seeds`: the real RL stage per seed in its own folder, scored like the evaluate stage, each seed once."""
    project, _, _ = smoke
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "selftok", "study", "rl-seeds", "--root", str(project), "--out", str(out), "--threads", "1"]
    bad = subprocess.run([*command, "--name", "bad", "--seeds", "0", "--set", "rl.group_size=1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "rl.group_size" in bad.stderr and not out.exists()  # refused before any work

    rl_model = tracking.file_hash(project / "models" / "vlm_rl")
    # no validation, so the last weights are kept: the statistics of the steps run are defined (validation keeps step 0 on ties)
    options = ["--set", "rl.ptx_coef=0.5", "--set", "rl.penalize_extra_objects=true", "--set", "geneval.select_fraction=0"]
    subprocess.run([*command, "--name", "g2", "--seeds", "0", "1", "--set", "rl.group_size=2", "--sample-seeds", "2", *options],
                   check=True, capture_output=True)
    result = json.loads((out / "g2" / "seed_1" / "result.json").read_text())
    pretrained = json.loads((out / "pretrained.json").read_text())
    assert set(pretrained["benchmark"]) == set(SETS) and pretrained["judge_sha256"]  # pins both benchmark sets
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    for name in SETS:
        evaluated, first = evaluate["generation"][name]["pretrained"], pretrained["sets"][name]["scores"][0]
        # sampling seed 0 is the recipe's own: the evaluate stage's images, by both judges
        assert first["overall"] == evaluated["overall"] and first["judge"]["overall"] == evaluated["judge"]["overall"]
        assert first["frechet_to_real"] == evaluated["frechet_to_real"]  # the same real renders as evaluate's
        assert pretrained["sets"][name]["data_ceiling"] == evaluate["data_ceiling"][name]  # through the same tokenizer
        runs, gain = result["scores"][name], result["gain"][name]
        assert len(runs) == len(pretrained["sets"][name]["scores"]) == gain["sample_seeds"] == 2
        assert all(0 <= r["judge"]["overall_strict"] <= r["judge"]["overall"] <= 1 for r in runs)
        assert gain["by_sample_seed"]["overall"] == pytest.approx(
            [(r["overall"] - p["overall"]) * 100 for r, p in zip(runs, pretrained["sets"][name]["scores"], strict=True)])
        assert math.isclose(gain["overall"], sum(gain["by_sample_seed"]["overall"]) / 2) and "judge_overall" in gain
    assert len(result["scores"]["rl_train"]) == 1  # RL's own prompts: the recipe's draw, a diagnostic
    assert set(result["scores"]["rl_train"][0]) == set(result["scores"]["rl_test"][0])  # scored the same way
    assert result["pretrained_rl_train"] in pretrained["rl_train_by_prompts"].values()  # RL's prompts are the recipe's
    assert "2 seeds)" in (out / "g2" / "table.md").read_text()
    assert "validation" not in result["stage"]
    assert result["seed"] == 1 and result["stage"]["rl"]["steps"] == 3 and "rl_last" not in result
    assert result["stage"]["rl"]["ptx_loss_last5"] > 0  # the stage read the copied codes for its pretraining batches
    headline = result["scores"]["rl_test"][0]
    assert result["stage"]["rl"]["extra_objects_last5"] >= 0 and headline["extra_objects"] >= 0
    assert headline["overall_strict"] <= headline["overall"]  # strict counts a subset of the correct images
    assert result["stage"]["rl"]["frechet_to_real_last5"] > 0  # RL measured its samples against real renders
    assert result["stage"]["rl"]["pixel_spread_last5"] >= 0
    assert not (project / "ablation_runs").exists() and tracking.file_hash(project / "models" / "vlm_rl") == rl_model  # untouched

    again = subprocess.run([*command, "--name", "g2", "--seeds", "0", "1", "--set", "rl.group_size=2", *options],
                           check=True, capture_output=True, text=True)
    assert again.stdout.count("done before") == 2
    other = subprocess.run([*command, "--name", "g2", "--seeds", "0"], capture_output=True, text=True)
    assert other.returncode != 0 and "other --set values" in other.stderr
    stale = json.loads((out / "pretrained.json").read_text()) | {"benchmark": "compositional only"}  # an OUT of the old sets
    (out / "pretrained.json").write_text(json.dumps(stale))
    refused = subprocess.run([*command, "--name", "fresh", "--seeds", "0"], capture_output=True, text=True)
    assert refused.returncode != 0 and "another benchmark" in refused.stderr and not (out / "fresh").exists()
    # the spatial control arm: its own RL stage, scored like evaluate scores that arm
    spatial = [*command[:-4], "--out", str(tmp_path / "spatial"), "--threads", "1", "--arm", "spatial"]
    subprocess.run([*spatial, "--name", "g2", "--seeds", "0", "--set", "rl.group_size=2"], check=True, capture_output=True)
    pretrained = json.loads((tmp_path / "spatial" / "pretrained.json").read_text())
    assert pretrained["pretrained_sha256"] == tracking.file_hash(project / "models" / "vlm_spatial")
    for name in SETS:
        assert pretrained["sets"][name]["scores"][0]["overall"] == evaluate["control"]["spatial"]["generation"][name]["pretrained"]["overall"]
    assert not (tmp_path / "spatial" / "g2" / "seed_0" / "models" / "renderer").exists()  # the spatial decoder renders
    summary = json.loads((out / "g2" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["headline"] == "rl_test"
    for name in SETS:
        assert len(summary[name]["overall"]["per_seed"]) == 2 and summary[name]["overall"]["se"] is not None
        assert "judge_overall" in summary[name] and isinstance(summary[name]["bars"]["met"], bool)
    assert set(summary["rl_test"]["bars"]) == {"overall_gain_at_least_15", "strict_gain_at_least_10", "every_seed_strict_at_least_5",
                                               "judges_agree", "met"}
    assert all(isinstance(v, bool) for v in summary["rl_test"]["bars"].values())
    assert isinstance(summary["compositional"]["bars"]["no_loss_beyond_2se"], bool)
    assert len((out / "g2" / "table.md").read_text().splitlines()) == 2 + 2 + 1  # header, rule, one row per seed, the mean


def test_sampling_study_scores_recipes_on_the_evaluate_benchmark(smoke, tmp_path: Path) -> None:
    """`selftok study sampling`: the project's own recipe reproduces evaluate's score; a bad recipe fails before any work."""
    project, _, _ = smoke
    out = tmp_path / "sweep.json"
    command = [sys.executable, "-m", "selftok", "study", "sampling", "--root", str(project), "--out", str(out), "--threads", "1"]
    bad = subprocess.run([*command, "--recipe", "cfg_scale=3", "--recipe", "guidance=7"], capture_output=True, text=True)
    assert bad.returncode != 0 and "guidance" in bad.stderr and not out.exists()

    cfg = load_params(project / "params.yaml").vlm.sampling.cfg_scale
    against = tmp_path / "other.json"  # another model's sweep: one row in common with the run below
    against.write_text(json.dumps([{"recipe": f"cfg_scale={cfg}", "seed": 0, "prompts": "compositional", "overall": 0.0}]))
    unrelated = tmp_path / "unrelated.json"
    unrelated.write_text(json.dumps([{"recipe": "cfg_scale=9", "seed": 0, "prompts": "compositional", "overall": 0.0}]))
    apart = subprocess.run([*command, "--recipe", f"cfg_scale={cfg}", "--against", str(unrelated)], capture_output=True, text=True)
    assert apart.returncode != 0 and "unrelated.json: no recipe, seed and prompt set in common" in apart.stderr and not out.exists()
    done = subprocess.run([*command, "--seeds", "1", "--recipe", f"cfg_scale={cfg}", "--recipe", "cfg_scale=1,min_p=0",
                           "--against", str(against)], check=True, capture_output=True, text=True)
    rows = json.loads(out.read_text())
    assert [(r["recipe"], r["prompts"]) for r in rows] == [(recipe, prompts) for recipe in (f"cfg_scale={cfg}", "cfg_scale=1,min_p=0")
                                                            for prompts in ("rl_train", "rl_test", "compositional")]
    evaluated = json.loads((project / "metrics" / "evaluate.json").read_text())["generation"]["compositional"]["pretrained"]
    assert rows[2]["overall"] == evaluated["overall"] and rows[2]["overall_se"] == evaluated["overall_se"]  # same images
    assert all(0 <= r["overall_strict"] <= r["overall"] <= 1 for r in rows)
    assert f"| cfg_scale={cfg} | {rows[0]['overall']:.3f} | {rows[1]['overall']:.3f} | {rows[2]['overall']:.3f} |" in done.stdout
    paired = json.loads((tmp_path / "sweep.paired.json").read_text())
    assert [(g["recipe"], g["prompts"], g["seeds"]) for g in paired] == [(f"cfg_scale={cfg}", "compositional", [0])]
    assert paired[0]["gain_points"] == pytest.approx(100 * rows[2]["overall"])
