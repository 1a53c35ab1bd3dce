"""ONNX export of the tiny bundle: one file, dynamic batch, metadata round-trip, parity, targets, CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.errors import ConfigError, MmdeployError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exported(tiny_exported):
    return tiny_exported


def test_onnx_is_one_checked_file_with_dynamic_batch(exported):
    import onnx

    run, summary = exported
    assert sorted(p.name for p in (run / "export").iterdir()) == ["model.onnx", "parity.json"]
    model = onnx.load(summary["onnx"], load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    dims = {i.name: i.type.tensor_type.shape.dim for i in model.graph.input}
    assert list(dims) == ["audio", "video"]
    assert dims["audio"][0].dim_param and dims["video"][0].dim_param  # batch is symbolic
    assert [d.dim_value for d in dims["audio"][1:]] == [1, 32, 126]
    assert [d.dim_value for d in dims["video"][1:]] == [3, 4, 32, 32]
    assert [o.name for o in model.graph.output] == ["fused_logits", "audio_logits", "video_logits"]


def test_metadata_round_trip(exported):
    from mmdeploy.bundle import load_bundle
    from mmdeploy.export import read_onnx_metadata

    run, summary = exported
    bundle = load_bundle(run, with_model=False)
    spec, classes, props = read_onnx_metadata(summary["onnx"])
    assert spec == bundle.spec and spec.digest() == bundle.spec.digest()
    assert classes == bundle.classes == ["alpha", "beta", "gamma", "delta"]
    assert props["mmdeploy.format"] == "mmdeploy-bundle" and json.loads(props["mmdeploy.arch"]) == bundle.arch


def test_parity_report(exported):
    run, summary = exported
    report = json.loads((run / "export" / "parity.json").read_text())["onnxruntime"]
    assert report == summary["parity"]["onnxruntime"]
    assert report["ok"] and report["tolerance"] == 1e-4 and report["batches"] == [1, 5]
    assert report["backend"] == "onnxruntime (CPUExecutionProvider)"
    assert [r["batch"] for r in report["per_batch"]] == [1, 5]
    assert report["max_abs_diff"] < 1e-4 and report["top1_agreement"] == 1.0
    assert report["inputs"].startswith("random:")  # the tiny bundle records no data manifest


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_matches_torch(exported, batch):
    from mmdeploy.bundle import load_bundle
    from mmdeploy.export import example_inputs, torch_logits
    from mmdeploy.runtime.ort_backend import OrtPredictor

    run, summary = exported
    bundle = load_bundle(run)
    audio, video = example_inputs(bundle.spec, batch, seed=batch)
    got = OrtPredictor(summary["onnx"]).logits(audio, video)
    want = torch_logits(bundle.model, audio, video)
    for key in ("fused", "audio", "video"):
        assert got[key].shape == (batch, 4)
        np.testing.assert_allclose(got[key], want[key], atol=1e-4)


def test_parity_uses_real_clips_from_the_manifest(exported, media_dir, tmp_path):
    from mmdeploy.bundle import load_bundle
    from mmdeploy.data.manifest import Item, write_manifest
    from mmdeploy.export import _ort_logits, check_parity, parity_inputs

    run, summary = exported
    manifest = write_manifest(tmp_path / "manifest.csv", [
        Item(str(media_dir / "cremad_1001_DFA_ANG_XX.flv"), "alpha", "test"),
        Item(str(media_dir / "grid_s1_bbaf2n.mpg"), "beta", "train")], classes=["alpha", "beta", "gamma", "delta"])
    bundle = load_bundle(run)
    bundle = dataclasses.replace(bundle, meta={**bundle.meta, "data": {"manifest": str(manifest)}})
    audio, video, source = parity_inputs(bundle, 5)
    assert source.startswith("clips: 2 from") and audio.shape[0] == video.shape[0] == 5
    assert np.array_equal(audio[0], audio[2]) and not np.array_equal(audio[0], audio[1])  # 2 clips, repeated
    report = check_parity(bundle, _ort_logits(Path(summary["onnx"]), ("CPUExecutionProvider",)), (1, 5), 1e-4, "ort")
    assert report["ok"] and report["inputs"] == source


def test_parity_outside_tolerance_fails_loudly(exported):
    from mmdeploy.bundle import load_bundle
    from mmdeploy.export import _fail_if_off, check_parity, torch_logits

    run, _ = exported
    bundle = load_bundle(run)
    shifted = lambda a, v: {k: x + 0.01 for k, x in torch_logits(bundle.model, a, v).items()}  # noqa: E731
    report = check_parity(bundle, shifted, (1, 5), 1e-4, "onnxruntime")
    assert not report["ok"] and report["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(MmdeployError, match="parity outside tolerance"):
        _fail_if_off(report, run / "export")


def test_export_outside_tolerance_rejects_the_onnx(exported, tmp_path):
    from mmdeploy.export import export, parse_target

    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    strict = parse_target({"parity": {"tolerance": 1e-12, "batches": [1, 5]}}, "strict", "strict.yaml")
    with pytest.raises(MmdeployError, match=r"parity outside tolerance .* model.onnx renamed to model.onnx.rejected"):
        export(run, target=strict, onnx=False)  # reuses the current ONNX: no second export
    assert not (run / "export" / "model.onnx").exists() and (run / "export" / "model.onnx.rejected").is_file()
    assert json.loads((run / "export" / "parity.json").read_text())["onnxruntime"]["ok"] is False


@pytest.mark.parametrize("path", sorted((REPO / "export").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_deploy_target_loads(path):
    from mmdeploy.export import load_target

    target = load_target(path)
    assert target.name == path.stem and 1 <= target.batch["min"] <= target.batch["opt"] <= target.batch["max"]
    assert 1 in target.parity_batches and 5 in target.parity_batches


@pytest.mark.parametrize("data, message", [
    ({"backend": "onnxruntime", "batchsize": 4}, "unknown key 'batchsize'"),
    ({"precision": "int4"}, "precision: 'int4' is not one of"),
    ({"batch": {"min": 8, "opt": 4, "max": 32}}, "min <= opt <= max"),
    ({"batch": {"min": 1, "max": 32}}, "needs integer min, opt and max"),
    ({"parity": {"tolerance": -1}}, "parity.tolerance"),
    ({"fp32_layers": ["attention"]}, "fp32_layers"),
    ({"backend": "tensorrt", "batch": {"min": 2, "opt": 8, "max": 32}}, "below the engine profile's batch.min"),
])
def test_bad_target_is_a_config_error(data, message):
    from mmdeploy.export import parse_target

    with pytest.raises(ConfigError, match=message):
        parse_target(data, name="t", where="export/t.yaml")


@pytest.mark.parametrize("written", ["1e-4", "1E-4", "1.0e-4", "0.0001"])
def test_target_numbers_read_as_written(tmp_path, written):
    """A deploy target written the way most people write it: `tolerance: 1e-4` is the float 1e-4."""
    from mmdeploy.export import load_target

    path = tmp_path / "mine.yaml"
    path.write_text(f"backend: onnxruntime\nparity: {{tolerance: {written}, batches: [1, 5]}}\n")
    assert load_target(path).tolerance == 1e-4


def test_unknown_target_name_lists_the_known_ones():
    from mmdeploy.export import load_target

    with pytest.raises(ConfigError, match="onnx-cpu"):
        load_target("no-such-target")


def test_fp16_onnx_target_is_refused(tiny_bundle):
    from mmdeploy.export import export

    with pytest.raises(ConfigError, match="fp16 applies to TensorRT"):
        export(tiny_bundle, precision="fp16")


def _main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the real CLI entry point in-process; (exit code, stdout, stderr)."""
    from mmdeploy.cli import main

    monkeypatch.setattr(sys, "argv", ["mmdeploy", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mmdeploy", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed here; this checks the message for machines without it")
def test_trt_without_tensorrt_exits_2_with_one_line(tiny_bundle, monkeypatch, capsys):
    code, _, err = _main(monkeypatch, capsys, "export", str(tiny_bundle), "--trt")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --trt: TensorRT is not installed")
    assert "pip install tensorrt --extra-index-url https://pypi.nvidia.com" in lines[0]
    assert not (tiny_bundle / "export").exists()  # refused before exporting anything


def test_stale_onnx_is_reexported(exported, tmp_path):
    import torch

    from mmdeploy.bundle import load_bundle, save_bundle
    from mmdeploy.export import onnx_is_current

    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    assert onnx_is_current(load_bundle(run, with_model=False), run / "export" / "model.onnx")
    bundle = load_bundle(run)
    with torch.no_grad():
        bundle.model.heads["audio"].bias.add_(1.0)
    save_bundle(run, bundle.model, bundle.classes, bundle.spec)  # retrained into the same folder
    assert not onnx_is_current(load_bundle(run, with_model=False), run / "export" / "model.onnx")


def test_export_refuses_tampered_weights_before_writing_onnx(tiny_bundle, tmp_path, monkeypatch, capsys):
    """The issue's case: 50 flipped bytes used to give a fresh ONNX whose recorded hash matched the
    tampered file. Now `mmdeploy export` exits 2 with one line and writes nothing."""
    from tests.test_bundle import flip_bytes

    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run)
    flip_bytes(run / "model.safetensors")
    code, out, err = _main(monkeypatch, capsys, "export", str(run))
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1
    assert lines[0].startswith(f"error: {run / 'model.safetensors'}: sha256") and "modified" in lines[0]
    assert not (run / "export").exists()


def test_export_records_the_onnx_digest_in_model_json(exported):
    import hashlib

    run, summary = exported
    meta = json.loads((run / "model.json").read_text())
    assert meta["export"] == {"onnx": "export/model.onnx",
                              "onnx_sha256": hashlib.sha256((run / "export" / "model.onnx").read_bytes()).hexdigest()}


def test_bento_saves_the_bundle_into_the_model_store(exported, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exported[0], run)
    home = tmp_path / "bentoml"
    result = _cli("export", str(run), "--bento", "--json", env={"BENTOML_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["onnx_exported"] is False  # the current ONNX is reused, not exported again
    assert summary["bento"].startswith("av-classifier:")
    version = summary["bento"].split(":")[1]
    stored = home / "models" / "av-classifier" / version
    for name in ("model.json", "model.safetensors", "export/model.onnx", "export/parity.json"):
        assert (stored / name).read_bytes() == (run / name).read_bytes()
    info = (stored / "model.yaml").read_text()
    assert "spec_digest" in info and "delta" in info  # labels/metadata carry the digest and the classes
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(stored, "onnxruntime")  # the store entry is itself a bundle
    assert predictor.classes == ["alpha", "beta", "gamma", "delta"]
