"""The params schema is the default profile; profiles are overlays; bad keys name themselves and their file."""

import contextlib
import copy
import itertools
from pathlib import Path

import pytest
import yaml

from selftok.config import (
    DEFAULT_PROFILE,
    Params,
    default_profile,
    load_params,
    merged,
    parse_overrides,
    parse_params,
    profile_data,
    profile_names,
    profile_yaml,
)
from selftok.errors import ConfigError
from selftok.nested import flatten
from selftok.tokenizer.spatial_params import SHARED_FROM_TOKENIZER

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))


def smoke() -> dict:
    return profile_data(ROOT, "smoke")


def test_params_yaml_is_the_generated_default_profile() -> None:
    """Change a default in the schema, then `selftok profile show default > params.yaml`."""
    assert (ROOT / "params.yaml").read_text() == profile_yaml(ROOT, DEFAULT_PROFILE)


def test_the_default_profile_is_the_schema_defaults() -> None:
    assert load_params(ROOT / "params.yaml") == Params()
    assert yaml.safe_load(profile_yaml(ROOT, DEFAULT_PROFILE)) == default_profile()
    assert len(flatten(default_profile())) <= 140


def test_every_key_of_the_default_profile_has_a_comment() -> None:
    """A value's comment is on its line; a section's on the line above (flows/retrain.py edits `  scenes:` blocks)."""
    lines = profile_yaml(ROOT, DEFAULT_PROFILE).splitlines()
    for above, line in itertools.pairwise(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            assert (" # " in line) if not line.endswith(":") else above.lstrip().startswith("# "), line


@pytest.mark.parametrize("name", OVERLAYS)
def test_an_overlay_holds_only_keys_that_differ_from_the_default(name: str) -> None:
    """Every key of an overlay changes the profile: leaving it out (its default, or the value derived
    when absent) would give other params."""
    overlay = yaml.safe_load((ROOT / "profiles" / f"{name}.yaml").read_text())
    default = flatten(default_profile())
    same = [key for key, value in flatten(overlay).items() if key in default and default[key] == value]
    assert not same, f"profiles/{name}.yaml repeats default values: {same}"
    full = parse_params(merged(default_profile(), overlay))
    for key in flatten(overlay):
        *parents, leaf = key.split(".")
        without = copy.deepcopy(overlay)
        node = without
        for part in parents:
            node = node[part]
        del node[leaf]
        with contextlib.suppress(ConfigError):  # some keys only make a valid profile together (widths and group norm)
            assert parse_params(merged(default_profile(), without)) != full, f"profiles/{name}.yaml: {key} changes nothing"


@pytest.mark.parametrize("name", [DEFAULT_PROFILE, *OVERLAYS])
def test_profile_show_output_validates_and_reads_back_as_the_profile(name: str, tmp_path: Path) -> None:
    shown = tmp_path / "params.yaml"
    shown.write_text(profile_yaml(ROOT, name))
    assert yaml.safe_load(shown.read_text()) == profile_data(ROOT, name)
    assert load_params(shown) == parse_params(profile_data(ROOT, name))
    if name != DEFAULT_PROFILE:  # an overlay read as a params file is the same profile (absent keys: defaults)
        assert load_params(ROOT / "profiles" / f"{name}.yaml") == load_params(shown)


def test_profile_names_and_unknown_profiles() -> None:
    assert profile_names(ROOT) == [DEFAULT_PROFILE, *OVERLAYS]
    with pytest.raises(ConfigError, match="known profiles: default, paper, smoke"):
        profile_data(ROOT, "laptop")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tokenizer:\n  num_tokns: 8\n", "tokenizer.num_tokns"),
        ("rl:\n  group_size: many\n", "rl.group_size"),
        ("tokenizer:\n  input_space: pixels\n", "tokenizer.input_space"),  # a retired switch is an unknown key
        ("control:\n  spatial:\n    steps: -1\n", "control.spatial.steps"),
    ],
)
def test_a_bad_key_in_an_overlay_or_params_file_names_the_dotted_key_and_the_file(tmp_path: Path, text: str, key: str) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "broken.yaml").write_text("# a broken overlay\n" + text)
    with pytest.raises(ConfigError) as caught:
        profile_data(tmp_path, "broken")
    assert str(tmp_path / "profiles" / "broken.yaml") in str(caught.value) and f"  {key}: " in str(caught.value)
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_params(tmp_path / "params.yaml")
    assert str(tmp_path / "params.yaml") in str(caught.value) and f"  {key}: " in str(caught.value)


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (lambda p: p["data"].update(imge_size=32), "data.imge_size", "Extra inputs are not permitted"),
        (lambda p: p["data"].update(image_size="big"), "data.image_size", "valid integer"),
        (lambda p: p["data"].update(image_size=-4), "data.image_size", "greater than or equal to 8"),
        (lambda p: p["data"]["scenes"].update(min_objects=3, max_objects=2), "data.scenes", "min_objects"),
        (lambda p: p["data"]["scenes"].update(holdout=["pink star"]), "data.scenes", "pink star"),
        (lambda p: p["data"].update(source="ftp"), "data.source", "'scenes', 'folder' or 'shards'"),
        (lambda p: p["data"].update(source="folder"), "data", "data.folder.path is not set"),
        (lambda p: p["validate"].update(max_bad_fraction=2), "validate.max_bad_fraction", "less than or equal to 1"),
        (lambda p: p.update(sed=1), "sed", "Extra inputs"),
        (lambda p: p["control"]["spatial"].update(size="XL"), "control.spatial.size", "'T', 'S' or 'B'"),
        (lambda p: p["control"]["spatial"].update(codebook_size=128), "(top level)",
         "control.spatial.codebook_size (128) must equal tokenizer.codebook_size (64)"),
    ],
)
def test_bad_values_name_their_key(edit, key: str, fragment: str) -> None:
    raw = smoke()
    edit(raw)
    with pytest.raises(ConfigError) as caught:
        parse_params(raw, "params.yaml")
    message = str(caught.value)
    assert f"  {key}: " in message, message
    assert fragment in message
    assert "'seed'" not in message, "a section-level error must not dump the whole file"


def test_the_control_follows_the_selftok_recipe_unless_told_otherwise() -> None:
    params = parse_params(merged(smoke(), {"tokenizer": {"steps": 9, "ema_decay": 0.9}, "renderer": {"edge_weight": 2.0}}))
    spatial = params.control.spatial
    assert (spatial.steps, spatial.ema_decay, spatial.edge_weight) == (9 + params.renderer.steps, 0.9, 2.0)
    assert spatial.num_tokens == params.tokenizer.num_tokens and spatial.batch_size == params.tokenizer.batch_size
    own = parse_params(merged(smoke(), {"control": {"spatial": {"steps": 50, "ema_decay": 0.5}}})).control.spatial
    assert (own.steps, own.ema_decay) == (50, 0.5)


def test_dvc_lists_the_tokenizer_keys_the_control_shares() -> None:
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train_spatial"]
    shared = {f"tokenizer.{key}" for key in SHARED_FROM_TOKENIZER} | {"tokenizer.steps", "renderer.steps", "renderer.edge_weight"}
    assert shared <= set(stage["params"])


def test_intervals_left_out_are_derived_and_set_ones_are_kept() -> None:
    params = Params()
    assert (params.tokenizer.log_every, params.tokenizer.eval_every, params.tokenizer.checkpoint_every) == (25, 500, 200)
    assert (params.vae.checkpoint_every, params.renderer.eval_every, params.vlm.checkpoint_every) == (250, 200, 250)
    assert params.rl.sample_every == params.rl.val_every and params.tokenizer.decoder_patch == params.tokenizer.encoder_patch
    short = parse_params({"vae": {"steps": 6}, "evaluator": {"epochs": 2}})
    assert (short.vae.log_every, short.vae.eval_every, short.vae.checkpoint_every, short.evaluator.checkpoint_every) == (6, 6, 6, 2)
    assert parse_params({"vae": {"steps": 6, "log_every": 1}}).vae.log_every == 1


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(bad)


def test_overrides_nest_dotted_keys_and_read_yaml_values() -> None:
    assert parse_overrides(["rl.group_size=24", "rl.ptx_coef=0", "seed=3", "rl.beta=1e-2"]) == {
        "rl": {"group_size": 24, "ptx_coef": 0, "beta": 0.01}, "seed": 3}
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = parse_params(merged(base, parse_overrides(["rl.group_size=24"])))
    assert params.rl.group_size == 24 and params.rl.lr == load_params(ROOT / "params.yaml").rl.lr  # the rest is kept
    assert base["rl"]["group_size"] == 16  # the base is not modified


@pytest.mark.parametrize("item", ["rl.group_size", "=3", "rl..beta=1", "seed=1 seed.x=2"])
def test_malformed_overrides_are_refused(item: str) -> None:
    with pytest.raises(ConfigError, match=r"KEY=VALUE|already given"):
        parse_overrides(item.split(" "))


def test_an_invalid_override_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"rl\.group_size"):
        parse_params(merged(yaml.safe_load((ROOT / "params.yaml").read_text()), parse_overrides(["rl.group_size=1"])))


def test_profile_use_writes_the_merged_profile_and_keeps_local_edits_unless_forced(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from selftok.cli import app

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "smoke.yaml").write_text((ROOT / "profiles" / "smoke.yaml").read_text())
    params = tmp_path / "params.yaml"
    params.write_text(profile_yaml(ROOT, DEFAULT_PROFILE))
    runner = CliRunner()
    assert runner.invoke(app, ["profile", "use", "smoke", "--root", str(tmp_path)]).exit_code == 0
    assert params.read_text() == profile_yaml(ROOT, "smoke")
    assert (tmp_path / "params.yaml.bak").read_text() == profile_yaml(ROOT, DEFAULT_PROFILE)
    params.write_text(params.read_text().replace("group_size: 4 ", "group_size: 6 "))
    refused = runner.invoke(app, ["profile", "use", "default", "--root", str(tmp_path)])
    assert refused.exit_code == 1 and "edits that are in no profile" in refused.output
    assert runner.invoke(app, ["profile", "use", "default", "--root", str(tmp_path), "--force"]).exit_code == 0
    assert params.read_text() == profile_yaml(ROOT, DEFAULT_PROFILE) and "group_size: 6 " in (tmp_path / "params.yaml.bak").read_text()
    shown = runner.invoke(app, ["profile", "show", "smoke", "--root", str(tmp_path)])
    assert shown.exit_code == 0 and shown.output == profile_yaml(ROOT, "smoke")
