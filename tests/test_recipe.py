"""Recipe validation: every user mistake is one ConfigError line naming the dotted key; CLI exit code 2."""
import sys
from pathlib import Path

import pytest

from mmdeploy.errors import ConfigError
from mmdeploy.config import apply_override, parse_yaml
from mmdeploy.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "training" / "recipes" / "synth-cpu.yaml"


def test_shipped_recipe_is_valid():
    recipe = load_recipe(RECIPE, check_files=False)
    assert recipe.method.name == "mlb" and "alpha" in recipe.method.params
    assert recipe.data.clip_spec().frames == 4 and recipe.data.synth is not None


def test_overrides_are_yaml_typed_and_validated():
    recipe = load_recipe(RECIPE, ["train.optimizer.lr=3e-4", "train.epochs=2", "method.alpha=1.5",
                                  "data.spec={preset: synth, n_mels: 32}"], check_files=False)
    assert recipe.train.optimizer.lr == 3e-4 and recipe.train.epochs == 2
    assert recipe.method.params["alpha"] == 1.5 and recipe.data.clip_spec().n_mels == 32
    assert parse_yaml("1e-3") == 0.001 and parse_yaml("1E-3") == 0.001 and parse_yaml("[1, 2]") == [1, 2]


@pytest.mark.parametrize("override, needle", [
    ("train.epoch=3", "train.epoch: unknown key 'epoch'; allowed keys in train: epochs, batch_size"),
    ("train.optimizer.foo=1", "train.optimizer.foo: unknown key"),
    ("extra=1", "extra: unknown key 'extra'; allowed keys in the recipe: data, model, method, train"),
    ("train.epochs=ten", "train.epochs: "),
    ("train.optimizer.name=rmsprop", "train.optimizer.name: "),
    ("data.spec={preset: synth, n_mels: many}", "data.spec.n_mels: expected an integer"),
    ("data.spec={preset: synth, hop: 3}", "data.spec.hop: unknown spec key"),
    ("data.spec=nope", "data.spec: spec preset 'nope': unknown"),
    ("train.schedule.t0=0", "train.schedule.t0: "),
])
def test_errors_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_recipe(RECIPE, [override], check_files=False)
    message = str(err.value)
    assert needle in message and "\n" not in message


@pytest.mark.parametrize("item, needle", [
    ("train.epochs", "expected dotted.key=value"),
    ("=3", "expected dotted.key=value"),
    ("train.epochs.x=1", "train.epochs is a value, not a section"),
    ("train.epochs=[1", "--set train.epochs: value '[1' is not valid YAML"),
])
def test_bad_set(item, needle):
    raw = parse_yaml(RECIPE.read_text())
    with pytest.raises(ConfigError, match=None) as err:
        apply_override(raw, item)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"data.manifest: .*nope.csv not found; expected a manifest CSV"):
        load_recipe(RECIPE, [f"data.manifest={tmp_path / 'nope.csv'}", "data.synth=null"])
    with pytest.raises(ConfigError, match="must be named manifest.csv"):
        load_recipe(RECIPE, [f"data.manifest={tmp_path / 'other.csv'}"], check_files=False)


def test_relative_paths_resolve_against_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(RECIPE, ["data.cache=null"], check_files=False)
    assert recipe.data.manifest_path == tmp_path / "data" / "synth" / "manifest.csv"
    assert recipe.data.cache_path == tmp_path / "data" / "synth" / "cache"


@pytest.mark.parametrize("args, needle", [
    (["--set", "train.batchsize=4"], "train.batchsize: unknown key"),
    (["--set", "train.epochs=many"], "train.epochs: "),
    (["--set", "nokey"], "--set 'nokey': expected dotted.key=value"),
    (["--data", "/nonexistent/m.csv", "--set", "data.synth=null"], "data.manifest: /nonexistent/m.csv not found"),
])
def test_cli_exit_code_2(args, needle, monkeypatch, capsys):
    from mmdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["mmdeploy", "train", str(RECIPE), *args, "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err


@pytest.mark.parametrize("path", sorted((REPO / "training" / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads_and_builds(path):
    """Each recipe in training/recipes validates, names a valid ClipSpec, and its method and model build
    (the datasets themselves are not here, so files are not checked)."""
    from mmdeploy.balance import build_method
    from mmdeploy.models import build_model

    recipe = load_recipe(path, check_files=False)
    spec = recipe.data.clip_spec()
    assert spec.spectrogram_shape[1] > 0 and spec.frames > 0
    build_method(recipe.method.name, **recipe.method.params)
    build_model(recipe.model.model_dump(), 6)
