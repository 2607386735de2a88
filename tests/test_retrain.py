import math
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.conftest import clone_project

from flows.retrain import set_scene_seed
from selftok import tracking
from selftok.config import load_params, profile_yaml

ROOT = Path(__file__).resolve().parents[1]
VLM = "selftok-vlm"


def test_set_scene_seed_edits_one_line(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    original = profile_yaml(ROOT, "smoke")
    params.write_text(original)
    assert set_scene_seed(params, 41) == 0
    assert load_params(params).data.scenes.seed == 41
    assert load_params(params).seed == 0  # the training seed is another key
    changed = [(a, b) for a, b in zip(original.splitlines(), params.read_text().splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and "41" in changed[0][1]


def test_set_scene_seed_without_the_key_fails_clearly(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(profile_yaml(ROOT, "smoke").replace("    seed: 0  ", "    # no seed  "))
    with pytest.raises(ValueError, match=r"no data\.scenes\.seed line"):
        set_scene_seed(params, 3)


def weights(version: str, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The tensors a registry version holds, downloaded from the store (not the project's models/ folder)."""
    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{VLM}/{version}", dst_path=str(tmp_path / f"v{version}"))
    files = sorted(Path(folder).rglob("*.safetensors"))
    assert files, f"version {version} holds no safetensors"
    return {f"{file.name}/{key}": value for file in files for key, value in load_file(str(file)).items()}


def differ(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a)


def obeys_the_rule(decision: dict, params) -> bool:
    """The promotion rule on the decision's own numbers (promotion.decide), or a documented refusal."""
    if decision["champion_score"] is None:
        return decision["promoted"] == ("no champion yet" in decision["reason"])
    gain = decision["challenger_score"] - decision["champion_score"]
    wins = gain >= decision["required_gain"] and gain > 0 and decision["required_gain"] >= params.evaluate.promotion_margin
    return decision["promoted"] == wins or (not decision["promoted"] and "pretrained model's" in decision["reason"])


def logged_decisions(project: Path) -> list:
    mlflow.set_tracking_uri(tracking.tracking_uri(project))
    runs = mlflow.search_runs(experiment_names=["selftok-smoke"], filter_string="tags.kind = 'retrain'", output_format="list")
    return sorted(runs, key=lambda run: run.info.start_time)


def version_tags(version: str) -> dict[str, str]:
    return mlflow.tracking.MlflowClient().get_model_version(VLM, version).tags


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a model folder in the project (every safetensors file under it)."""
    return {f"{file.relative_to(folder)}/{key}": value for file in sorted(folder.rglob("*.safetensors"))
            for key, value in load_file(str(file)).items()}


def new_data_wrecked_recipe(params_file: Path) -> None:
    """The VLM recipe wrecked on purpose (the highest learning rate the schema allows, a thousand
    times the smoke recipe's), and every stage smaller than the smoke run: new data reruns all of
    them, so this round costs what its stages cost. (The smoke RL cannot be the thing wrecked:
    every sample of a group gets the same reward, GRPO's advantages are zero and RL leaves the
    weights as they are.)"""
    raw = yaml.safe_load(params_file.read_text())
    raw["vlm"].update(lr=1.0, steps=10, warmup_steps=2, eval_every=10, checkpoint_every=5)
    raw["rl"]["steps"] = 2
    raw["evaluator"]["epochs"] = 1
    raw["evaluate"].update(val_images=8, decode_steps=2)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.integration
def test_retraining_rounds_new_data_rescores_the_champion_then_nothing_new(smoke_run, prefect_server, tmp_path: Path) -> None:
    """Two rounds on a clone of the smoke run, the decision by the promotion rule and logged.

    New data with a wrecked VLM recipe: every stage reruns, the tokenizer (its recipe untouched)
    learns other weights from the new data, the benchmark changes with the retrained judge, so the
    champion is loaded from the registry and re-scored on the new benchmark (recorded on its
    version): the rule decides on the two scores, which is how a round on new data can promote,
    and the wrecked challenger is kept out. Nothing new: every stage skips and nothing is re-decided.
    """
    from prefect.artifacts import Artifact

    from flows.retrain import retrain

    project = clone_project(smoke_run[0], tmp_path / "project")
    mlflow.set_tracking_uri(tracking.tracking_uri(project))
    champion = tracking.alias_version(VLM, tracking.CHAMPION)
    assert champion is not None
    champion_weights, old_benchmark = weights(champion, tmp_path), version_tags(champion)["benchmark.hash"]
    tokenizer_before = folder_tensors(project / "models" / "tokenizer")
    lock_before = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["outs"]

    # 1. new data (seed 0 -> 1) and a wrecked VLM, in one round: every stage reruns
    params_file = project / "params.yaml"
    new_data_wrecked_recipe(params_file)
    fresh = retrain(root=str(project))
    assert load_params(params_file).data.scenes.seed == 1
    assert not any(r["skipped"] for r in fresh["stages"])
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["outs"] != lock_before
    assert differ(folder_tensors(project / "models" / "tokenizer"), tokenizer_before)  # the new data, not the recipe
    decision = fresh["promotion"]
    assert decision["decided"] and decision["champion_rescored"] is True, decision
    assert decision["champion_before"] == decision["champion_after"] == champion != decision["challenger"]
    assert not decision["promoted"] and obeys_the_rule(decision, load_params(params_file)), decision
    assert "another benchmark" not in decision["reason"]
    rescored, challenger = version_tags(champion), version_tags(decision["challenger"])
    assert rescored["benchmark.hash"] == challenger["benchmark.hash"] != old_benchmark and rescored["benchmark.rescored"] == "true"
    assert math.isclose(float(rescored["benchmark.overall"]), decision["champion_score"])
    assert differ(weights(decision["challenger"], tmp_path), champion_weights)

    # 2. nothing new: every stage skips, the aliases stay, the round says so
    same = retrain(root=str(project), data_seed=1)
    assert all(r["skipped"] for r in same["stages"])
    assert not same["promotion"]["decided"] and same["promotion"]["champion_after"] == champion

    runs = logged_decisions(project)
    assert [run.data.tags["promotion.decided"] for run in runs] == ["True", "False"]
    assert runs[0].data.tags["promotion.champion_rescored"] == "True"
    assert math.isclose(runs[0].data.metrics["promotion.champion_score"], decision["champion_score"])
    assert runs[0].data.params["data.scenes.seed.after"] == "1"
    summary = Artifact.get("selftok-retrain-decision")
    assert summary is not None and "evaluate skipped: nothing changed" in str(summary.data)
