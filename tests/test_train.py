"""Training end to end on a tiny synthetic set: bundle, logs, plots, eval, resume, determinism, schedule."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from mmdeploy import train as training
from mmdeploy.train import learning_rate, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"audio": {"type": "resnet", "width": 4, "layers": [1, 1, 1, 1]},
        "video": {"type": "resnet", "width": 4, "layers": [1, 1, 1, 1]},
        "fusion": {"type": "late"}}


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory) -> Path:
    """28 synthetic clips of 4 classes at 32 px, generated once per session."""
    from mmdeploy.data.synth import generate

    return generate(tmp_path_factory.mktemp("synth"), clips=28, seed=0, classes=4, size=32, workers=1)


@pytest.fixture(scope="module")
def recipe(synth_manifest, tmp_path_factory) -> dict:
    return {"data": {"manifest": str(synth_manifest),
                     "spec": {"preset": "synth", "frame_height": 32, "frame_width": 32, "n_mels": 32, "frames": 2},
                     "cache": str(tmp_path_factory.mktemp("cache"))},
            "model": TINY,
            "method": {"name": "mlb", "alpha": 0.8},
            "train": {"epochs": 2, "batch_size": 8, "seed": 3, "augment": True,
                      "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 1e-4}}}


@pytest.fixture(scope="module")
def run(recipe, tmp_path_factory) -> Path:
    return train(recipe, tmp_path_factory.mktemp("run"), quiet=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_bundle_logs_plots_checkpoint(run):
    meta = json.loads((run / "model.json").read_text())
    assert meta["method"] == {"name": "mlb", "alpha": 0.8} and len(meta["classes"]) == 4
    assert Path(meta["data"]["manifest"]).is_file() and Path(meta["data"]["cache"]).is_dir()
    summary = meta["metrics"]
    assert summary["best_epoch"] in (1, 2) and set(summary["val"]) >= {"fused_acc", "per_modality_acc", "macro_f1", "ece"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]["k"]) == {"audio", "video"} and rows[0]["lr"] == 3e-3
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert all(0 < s["k_audio"] < 2 and 0 < s["k_video"] < 2 for s in steps)
    for png in ("accuracy.png", "coefficients.png"):
        assert (run / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in (run / "checkpoint").iterdir()} == {"model.safetensors", "optimizer.safetensors",
                                                               "method.safetensors", "state.json"}
    assert not list(run.rglob("*.pt")) and not list(run.rglob("*.pkl"))


def test_reloaded_bundle_reproduces_validation_metrics(run):
    """The bundle's logits are the trained model's: eval of the reloaded bundle equals the logged val."""
    from mmdeploy.evaluate import evaluate, rounded

    meta = json.loads((run / "model.json").read_text())
    assert {"split": "val", **rounded(meta["metrics"]["val"])} == evaluate(run, "val")


def test_bundle_is_the_best_validation_epoch_not_the_last(recipe, tmp_path, monkeypatch):
    """Validation accuracy scripted to 0.2, 0.9, 0.4 over three epochs: the bundle must hold epoch 2's
    weights (snapshotted when its checkpoint was written) and its metrics, not epoch 3's."""
    real_predict, real_summarize, real_checkpoint = training.predict, training.summarize, training.save_checkpoint
    split, script, snapshots = {}, iter([0.2, 0.9, 0.4]), []

    def predict(model, loader, device="cpu"):
        split["now"] = loader.dataset.items[0].split
        return real_predict(model, loader, device)

    def summarize(logits, labels):
        out = real_summarize(logits, labels)
        return {**out, "fused_acc": next(script)} if split["now"] == "val" else out

    def checkpoint(run, model, *args):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_checkpoint(run, model, *args)

    monkeypatch.setattr(training, "predict", predict)
    monkeypatch.setattr(training, "summarize", summarize)
    monkeypatch.setattr(training, "save_checkpoint", checkpoint)
    out = train(recipe, tmp_path / "best", overrides=["train.epochs=3", "train.augment=false"], quiet=True)
    assert len(snapshots) == 3 and not same(snapshots[1], snapshots[2])
    bundle = weights(out / "model.safetensors")
    assert same(bundle, snapshots[1]) and not same(bundle, snapshots[2])
    meta = json.loads((out / "model.json").read_text())
    assert meta["metrics"]["best_epoch"] == 2 and meta["metrics"]["val"]["fused_acc"] == 0.9
    assert [r["best"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [True, True, False]


def test_eval_cli_json(run, capsys, monkeypatch):
    from mmdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["mmdeploy", "eval", str(run), "--json"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"split", "fused_acc", "per_modality_acc", "macro_f1", "ece", "n"}
    assert result["split"] == "test" and set(result["per_modality_acc"]) == {"audio", "video"}
    assert 0 <= result["fused_acc"] <= 1 and result["n"] > 0
    numbers = [result["fused_acc"], result["macro_f1"], result["ece"], *result["per_modality_acc"].values()]
    assert all(isinstance(x, float) and x == round(x, 4) for x in numbers)  # 4 decimals, like the text output


def test_resume_after_kill_gives_the_same_weights(recipe, run, tmp_path, monkeypatch):
    """Kill after epoch 1, resume: identical weights, optimizer state and step log as the uninterrupted
    run (which also shows that two runs with one seed are identical; another seed differs)."""
    real = training.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after epoch 1's checkpoint

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "killed", quiet=True)
    monkeypatch.setattr(training, "save_checkpoint", real)
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "killed" / "plots").exists()
    other_seed = train(recipe, tmp_path / "seed4", seed=4, overrides=["train.epochs=1"], quiet=True)
    assert not same(weights(other_seed / "checkpoint" / "model.safetensors"),
                    weights(tmp_path / "killed" / "checkpoint" / "model.safetensors"))
    resumed = train(recipe, tmp_path / "killed", resume=True, quiet=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert same(weights(run / "checkpoint" / name), weights(resumed / "checkpoint" / name))
    assert same(weights(run / "model.safetensors"), weights(resumed / "model.safetensors"))
    assert (run / "steps.jsonl").read_text() == (resumed / "steps.jsonl").read_text()


def test_two_stage_run_resumed_at_the_stage_boundary_matches_the_uninterrupted_one(recipe, tmp_path, monkeypatch):
    """pretrain-finetune (stage 1: epoch 1, stage 2: epoch 2) killed right after the stage-1 checkpoint and
    resumed: the same weights, optimizer state and logs as the run that went through; both stages logged."""
    sets = ["method.pretrain_epochs=1", "method.finetune_lr_scale=0.5"]
    whole = train(recipe, tmp_path / "whole", method="pretrain-finetune", overrides=sets, quiet=True)
    real = training.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "killed", method="pretrain-finetune", overrides=sets, quiet=True)
    monkeypatch.setattr(training, "save_checkpoint", real)
    resumed = train(recipe, tmp_path / "killed", method="pretrain-finetune", overrides=sets, resume=True, quiet=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert same(weights(whole / "checkpoint" / name), weights(resumed / "checkpoint" / name))
    assert (whole / "steps.jsonl").read_text() == (resumed / "steps.jsonl").read_text()
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["best"]) for r in rows] == [(1, False), (2, True)]
    assert rows[1]["lr"] == pytest.approx(0.5 * rows[0]["lr"])
    assert (resumed / "plots" / "accuracy.png").is_file()


def test_other_method_starts_from_its_own_defaults(recipe, tmp_path):
    out = train(recipe, tmp_path / "joint", method="joint", overrides=["train.epochs=1"], quiet=True)
    assert json.loads((out / "model.json").read_text())["method"] == {"name": "joint"}
    assert json.loads((out / "metrics.jsonl").read_text())["k"] == {}


def test_paper_schedule_restarts_on_global_steps():
    cfg = SimpleNamespace(name="constant_cosine_restarts", warmup_steps=10, t0=4, t_mult=2)
    lrs = [learning_rate(s, 1.0, cfg, 100) for s in range(40)]
    assert lrs[:10] == [1.0] * 10                      # constant "warm-up", no ramp
    assert lrs[12] == 1.0 and lrs[28] == 1.0           # restarts at 4 (2^n - 1): 12, 28
    assert lrs[11] < lrs[10] and abs(lrs[20] - 0.5) < 1e-9   # cycle 12..27 (T_i = 16): midpoint 20
    cosine = SimpleNamespace(name="cosine", warmup_steps=2, t0=4, t_mult=2)
    assert [learning_rate(s, 1.0, cosine, 10) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert learning_rate(10, 1.0, cosine, 10) < 1e-12


def test_rounded_metrics_by_hand():
    from mmdeploy.evaluate import rounded

    assert rounded({"fused_acc": 2 / 3, "per_modality_acc": {"audio": 0.123456, "video": 1.0}, "n": 7, "split": "val"}) \
        == {"fused_acc": 0.6667, "per_modality_acc": {"audio": 0.1235, "video": 1.0}, "n": 7, "split": "val"}


def test_metric_functions_by_hand():
    from mmdeploy.evaluate import expected_calibration_error, macro_f1

    labels = torch.tensor([0, 1, 1, 1])
    assert abs(macro_f1(torch.tensor([0, 0, 1, 1]), labels, 3) - (2 / 3 + 4 / 5) / 2) < 1e-6  # class 2 unseen
    probs = torch.tensor([[0.9, 0.1], [0.62, 0.38], [0.3, 0.7], [0.2, 0.8]])
    # one sample per bin: mean |correct - confidence| = (0.1 + 0.62 + 0.3 + 0.2) / 4
    assert abs(expected_calibration_error(probs, torch.tensor([0, 1, 1, 1])) - 0.305) < 1e-6
    assert expected_calibration_error(torch.tensor([[0.95, 0.05]] * 20), torch.tensor([0] * 19 + [1])) < 1e-6


@pytest.mark.parametrize("name", sorted(__import__("mmdeploy.balance", fromlist=["METHODS"]).METHODS))
def test_every_method_trains_evaluates_exports_and_classifies(name, recipe, synth_manifest, tmp_path, monkeypatch,
                                                              capsys):
    """The registry end to end: each method trains (two-stage ones: one epoch per stage) into a bundle that
    `eval` reproduces, exports to ONNX within the parity tolerance, and classifies a clip with ONNX Runtime;
    the fused probabilities it reports are the exported graph's (for the ensemble: the mean of the heads')."""
    from mmdeploy.cli import main
    from mmdeploy.data.manifest import read_manifest
    from mmdeploy.evaluate import evaluate, rounded
    from mmdeploy.export import export

    sets = ["method.permutations=2"] if name == "mcr" else []
    run = train(recipe, tmp_path / name, method=name, overrides=sets, quiet=True)
    meta = json.loads((run / "model.json").read_text())
    assert meta["method"]["name"] == name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    if name.startswith("pretrain-"):
        assert [r["stage"] for r in rows] == [1, 2] and meta["metrics"]["best_epoch"] == 2
    assert {"split": "test", **rounded(meta["metrics"]["test"])} == evaluate(run, "test")
    summary = export(run)
    assert Path(summary["onnx"]).is_file()
    clip = next(it.path for it in read_manifest(synth_manifest).items if it.split == "test")
    monkeypatch.setattr(sys, "argv", ["mmdeploy", "classify", str(clip), "--model", str(run), "--backend",
                                      "onnxruntime", "--json"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["backend"].startswith("onnxruntime") and result["label"] in meta["classes"]
    assert sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    if name == "ensemble":
        heads = result["per_modality"]
        for c, p in result["probs"].items():
            assert p == pytest.approx((heads["audio"]["probs"][c] + heads["video"]["probs"][c]) / 2, abs=2e-6)
