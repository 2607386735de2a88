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


@pytest.mark.integration
def test_retraining_rounds_wreck_new_data_and_nothing_new(smoke_run, prefect_server, tmp_path: Path) -> None:
    """Three rounds on a clone of the smoke run, each deciding by the promotion rule and logging why.

    Wrecked: the VLM pretrained at a learning rate that destroys it, no new data: the VLM, RL and
    evaluate rerun on the same benchmark and the challenger does not beat the champion, so
    `champion` stays. (The smoke RL cannot be the thing wrecked: every sample of a group gets the
    same reward, so GRPO's advantages are zero and RL leaves the weights as they are.) New data: every stage reruns
    and new weights are registered. Nothing new: every stage skips and nothing is re-decided.
    Which way the new-data round goes depends on the smoke model's scores, which change with any
    change to a model; the test checks the decision against the rule on its own logged numbers.
    """
    from prefect.artifacts import Artifact

    from flows.retrain import retrain

    project = clone_project(smoke_run[0], tmp_path / "project")
    mlflow.set_tracking_uri(tracking.tracking_uri(project))
    champion = tracking.alias_version(VLM, tracking.CHAMPION)
    assert champion is not None
    champion_weights = weights(champion, tmp_path)

    # 1. wrecked on purpose, on the same data
    params_file = project / "params.yaml"
    original = params_file.read_text()
    raw = yaml.safe_load(original)
    raw["vlm"]["lr"] = 1.0  # the highest the schema allows: a thousand times the smoke recipe's
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    wrecked = retrain(root=str(project), data_seed=0)
    ran = {r["stage"] for r in wrecked["stages"] if not r["skipped"]}
    assert {"pretrain_vlm@selftok", "rl_finetune@selftok", "evaluate"} <= ran and not {"ingest", "train_tokenizer"} & ran
    decision = wrecked["promotion"]
    assert decision["decided"] and not decision["promoted"], decision
    assert decision["champion_before"] == decision["champion_after"] == champion != decision["challenger"]
    assert obeys_the_rule(decision, load_params(params_file))
    assert differ(weights(decision["challenger"], tmp_path), champion_weights)

    # 2. new data (the recipe restored): the data hash changes and every stage reruns
    params_file.write_text(original)
    lock_before = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["outs"]
    fresh = retrain(root=str(project))
    assert load_params(params_file).data.scenes.seed == 1
    assert not any(r["skipped"] for r in fresh["stages"])
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["ingest"]["outs"] != lock_before
    decision = fresh["promotion"]
    assert decision["decided"] and decision["challenger"] not in (champion, wrecked["promotion"]["challenger"])
    new_weights = weights(decision["challenger"], tmp_path)
    assert differ(new_weights, champion_weights)
    assert decision["champion_after"] == (decision["challenger"] if decision["promoted"] else champion)
    assert obeys_the_rule(decision, load_params(params_file)) or "another benchmark" in decision["reason"]

    # 3. nothing new: every stage skips, the aliases stay, the round says so
    same = retrain(root=str(project), data_seed=1)
    assert all(r["skipped"] for r in same["stages"])
    assert not same["promotion"]["decided"] and same["promotion"]["champion_after"] == decision["champion_after"]

    runs = logged_decisions(project)
    assert [run.data.tags["promotion.decided"] for run in runs] == ["True", "True", "False"]
    numbers = runs[0].data.metrics
    assert math.isclose(numbers["promotion.challenger_score"], wrecked["promotion"]["challenger_score"])
    assert runs[1].data.params["data.scenes.seed.after"] == "1"
    summary = Artifact.get("selftok-retrain-decision")
    assert summary is not None and "evaluate skipped: nothing changed" in str(summary.data)
