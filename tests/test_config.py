from pathlib import Path

import pytest
import yaml

from selftok.config import load_params, merged, parse_overrides, parse_params
from selftok.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def smoke() -> dict:
    return yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())


@pytest.mark.parametrize("profile", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_is_valid(profile: Path) -> None:
    load_params(profile)


def test_params_yaml_is_the_default_profile() -> None:
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == yaml.safe_load(
        (ROOT / "profiles" / "default.yaml").read_text()
    )


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
    assert parse_overrides(["rl.group_size=24", "rl.kl_estimator=exact", "seed=3", "rl.beta=1e-2"]) == {
        "rl": {"group_size": 24, "kl_estimator": "exact", "beta": 0.01}, "seed": 3}
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
