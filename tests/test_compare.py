"""`mmdeploy compare` end to end on a tiny synthetic set: every method x seed is a normal bundle, the
tables / tests / plot are written, and a compare killed mid-run resumes without retraining finished runs."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from mmdeploy import train as training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"audio": {"type": "resnet", "width": 4, "layers": [1, 1, 1, 1]},
        "video": {"type": "resnet", "width": 4, "layers": [1, 1, 1, 1]}, "fusion": {"type": "late"}}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> dict:
    from mmdeploy.data.synth import generate

    manifest = generate(tmp_path_factory.mktemp("synth"), clips=28, seed=0, classes=4, size=32, workers=1)
    return {"data": {"manifest": str(manifest), "cache": str(tmp_path_factory.mktemp("cache")),
                     "spec": {"preset": "synth", "frame_height": 32, "frame_width": 32, "n_mels": 32, "frames": 2}},
            "model": TINY, "method": {"name": "joint"},
            "train": {"epochs": 2, "batch_size": 8, "seed": 0, "optimizer": {"name": "adam", "lr": 3e-3}}}


def test_killed_compare_resumes_without_retraining_and_writes_the_tables(recipe, tmp_path, monkeypatch, capsys):
    from mmdeploy.cli import main
    from mmdeploy.compare import compare, finished, run_dir

    out = tmp_path / "cmp"
    real_save, calls = training.save_checkpoint, {"n": 0}

    def save_then_die_on_the_fifth(*args, **kwargs):  # runs 1-2 finish (2 epochs each); run 3 dies after epoch 1
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_die_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        compare(recipe, ["joint", "ensemble"], seeds=2, out=out, say=lambda _: None)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    order = [("joint", 0), ("ensemble", 0), ("joint", 1), ("ensemble", 1)]
    assert [finished(run_dir(out, m, s)) for m, s in order] == [True, True, False, False]
    done = {k: (run_dir(out, *k) / "model.safetensors").read_bytes() for k in order[:2]}

    real_train, seen = training.train, []

    def recording_train(recipe, out, **kwargs):
        seen.append((Path(out).name, kwargs["resume"]))
        return real_train(recipe, out, **kwargs)

    monkeypatch.setattr(training, "train", recording_train)
    path = tmp_path / "recipe.json"           # the CLI takes a recipe file: JSON is YAML
    path.write_text(json.dumps(recipe))
    monkeypatch.setattr(sys, "argv", ["mmdeploy", "compare", str(path), "--methods", "joint,ensemble", "--seeds", "2",
                                      "--out", str(out), "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    assert seen == [("joint-seed1", True), ("ensemble-seed1", False)]       # finished runs untouched
    assert all((run_dir(out, *k) / "model.safetensors").read_bytes() == b for k, b in done.items())
    table = capsys.readouterr().out
    assert table.startswith("| method | fused acc %") and "| ensemble |" in table and "Wilcoxon p" in table

    result = json.loads((out / "compare.json").read_text())
    assert result["methods"] == ["joint", "ensemble"] and result["seeds"] == [0, 1] and len(result["runs"]) == 4
    assert "cores" in result["machine"] and result["command"].startswith("mmdeploy compare")
    for m, s in order:  # every run is an ordinary bundle whose metrics the table reports
        meta = json.loads((run_dir(out, m, s) / "model.json").read_text())
        row = next(r for r in result["runs"] if (r["method"], r["seed"]) == (m, s))
        assert row["fused_acc"] == meta["metrics"]["test"]["fused_acc"] and meta["recipe"]["train"]["seed"] == s
    ens = result["summary"]["ensemble"]["fused_acc"]
    assert ens["values"] == [r["fused_acc"] for r in result["runs"] if r["method"] == "ensemble"]
    assert set(ens["vs_reference"]) >= {"diff", "p_t", "p_wilcoxon"} and "vs_reference" not in \
        result["summary"]["joint"]["fused_acc"]
    assert ens["ci"][0] <= ens["mean"] <= ens["ci"][1]
    assert result["summary"]["joint"]["heads_trained"] is False and "(untrained)" in table
    rows = list(csv.DictReader(open(out / "compare.csv")))
    assert len(rows) == 2 * 5
    assert {r["metric"] for r in rows} == {"fused_acc", "audio_acc", "video_acc", "macro_f1", "ece"}
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "compare.md").read_text()
    assert md.startswith("Command: `mmdeploy compare") and "Machine:" in md and "No method differs" in md or \
        "Significant" in md


def test_parallel_jobs_train_every_run_once(recipe, tmp_path):
    from mmdeploy.compare import compare, finished, run_dir

    quick = {**recipe, "train": {**recipe["train"], "epochs": 1}}
    result = compare(quick, ["joint", "multiloss"], seeds=2, out=tmp_path / "par", jobs=2, say=lambda _: None)
    assert all(finished(run_dir(tmp_path / "par", m, s)) for m in ("joint", "multiloss") for s in (0, 1))
    pairs = {(m, s) for m in ("joint", "multiloss") for s in (0, 1)}
    assert {(r["method"], r["seed"]) for r in result["runs"]} == pairs


@pytest.mark.parametrize("kwargs, key", [
    ({"methods": ["joint"]}, "--methods"), ({"methods": ["joint", "mbl"]}, "--methods"), ({"seeds": 1}, "--seeds"),
    ({"jobs": 0}, "--jobs"), ({"per_method": ["mcr.permutations=2"]}, "--method-set")])
def test_bad_compare_arguments_name_the_option(recipe, tmp_path, kwargs, key):
    from mmdeploy.compare import compare
    from mmdeploy.errors import ConfigError

    args = {"methods": ["joint", "mlb"], "seeds": 2, **kwargs}
    with pytest.raises(ConfigError, match=key):
        compare(recipe, out=tmp_path, say=lambda _: None, **args)
