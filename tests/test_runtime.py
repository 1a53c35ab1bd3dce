"""Predictor backends, `auto` selection with faked availability, explicit unavailable backends, doctor."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmdeploy import runtime
from mmdeploy.errors import BackendUnavailable
from tests.test_export import _main

CLASSES = ["alpha", "beta", "gamma", "delta"]


@pytest.fixture(scope="module")
def run(tiny_exported):
    return tiny_exported[0]


def inputs(spec, batch, seed=0):
    from mmdeploy.export import example_inputs

    return example_inputs(spec, batch, seed)


def test_auto_on_cpu_picks_onnxruntime_and_says_why_not_the_others(run, cpu_only):
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(run)
    assert predictor.backend == "onnxruntime-cpu" and predictor.classes == CLASSES
    assert list(predictor.skipped) == ["tensorrt", "onnxruntime-cuda", "torch-cuda-fp16"]
    assert predictor.skipped["tensorrt"] == "tensorrt faked off"


@pytest.mark.parametrize("usable, expected", [
    (("tensorrt", "onnxruntime-cuda", "torch-cuda-fp16", "onnxruntime-cpu", "torch-cpu"), "tensorrt"),
    (("onnxruntime-cuda", "torch-cuda-fp16", "onnxruntime-cpu", "torch-cpu"), "onnxruntime-cuda"),
    (("torch-cuda-fp16", "onnxruntime-cpu", "torch-cpu"), "torch-cuda-fp16"),
    (("onnxruntime-cpu", "torch-cpu"), "onnxruntime-cpu"),
    (("torch-cpu",), "torch-cpu"),
])
def test_auto_order_with_faked_availability(run, monkeypatch, usable, expected):
    from mmdeploy import runtime

    for name in runtime.BACKENDS:
        monkeypatch.setitem(runtime.CHECKS, name, lambda name=name: None if name in usable else "faked off")
    monkeypatch.setattr(runtime, "artifact_reason", lambda name, run: None)
    chosen, skipped = runtime.select_backend(run)
    assert chosen == expected
    assert list(skipped) == list(runtime.AUTO_ORDER[:runtime.AUTO_ORDER.index(expected)])


def test_auto_skips_onnxruntime_without_an_export(tiny_bundle, cpu_only, tmp_path):
    from mmdeploy.runtime import load_predictor

    bare = tmp_path / "bare"
    shutil.copytree(tiny_bundle, bare, ignore=shutil.ignore_patterns("export"))
    predictor = load_predictor(bare)
    assert predictor.backend == "torch-cpu"
    assert "model.onnx missing" in predictor.skipped["onnxruntime-cpu"]
    assert "mmdeploy export" in predictor.skipped["onnxruntime-cpu"]


def test_auto_skips_an_onnx_exported_from_other_weights(run, cpu_only, tmp_path):
    import torch

    from mmdeploy.bundle import load_bundle, save_bundle
    from mmdeploy.runtime import load_predictor

    bundle = load_bundle(run)
    with torch.no_grad():
        bundle.model.heads["audio"].bias.add_(1.0)  # retrained into the same folder, export not rerun
    retrained = tmp_path / "retrained"
    shutil.copytree(run, retrained)
    save_bundle(retrained, bundle.model, bundle.classes, bundle.spec)
    predictor = load_predictor(retrained)
    assert predictor.backend == "torch-cpu"
    assert "exported from other weights" in predictor.skipped["onnxruntime-cpu"]


@pytest.mark.parametrize("backend, message", [
    ("tensorrt", "tensorrt faked off"),
    ("onnxruntime-cuda", "onnxruntime-cuda faked off"),
    ("torch-cuda-fp16", "torch-cuda-fp16 faked off"),
    ("tpu", "unknown"),
])
def test_explicit_unavailable_backend_raises_with_the_reason(run, cpu_only, backend, message):
    from mmdeploy.runtime import load_predictor

    with pytest.raises(BackendUnavailable, match=message):
        load_predictor(run, backend)


def test_explicit_onnxruntime_without_export_names_the_fix(tiny_bundle, cpu_only, tmp_path):
    from mmdeploy.runtime import load_predictor

    bare = tmp_path / "bare"
    shutil.copytree(tiny_bundle, bare, ignore=shutil.ignore_patterns("export"))
    with pytest.raises(BackendUnavailable, match=r"model.onnx missing; run `mmdeploy export"):
        load_predictor(bare, "onnxruntime")


@pytest.mark.parametrize("batch", [1, 5])
def test_onnxruntime_and_torch_predict_the_same_probabilities(run, cpu_only, batch):
    from mmdeploy.runtime import load_predictor

    ort_p, torch_p = load_predictor(run, "onnxruntime"), load_predictor(run, "torch")
    assert (ort_p.backend, torch_p.backend) == ("onnxruntime-cpu", "torch-cpu")
    assert ort_p.spec == torch_p.spec and ort_p.classes == torch_p.classes == CLASSES
    audio, video = inputs(ort_p.spec, batch, seed=batch)
    a, b = ort_p.predict(audio, video), torch_p.predict(audio, video)
    for key in ("fused", "audio", "video"):
        assert a[key].shape == (batch, 4) and a[key].dtype == np.float32
        np.testing.assert_allclose(a[key].sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)


@pytest.mark.parametrize("name", runtime.BACKENDS)
def test_every_registered_backend_predicts_like_torch_cpu(run, name, request):
    """One test per registry entry (timm's habit): where the backend can run here (its check, then its
    exported files), it gives the reference's probabilities; elsewhere it says why, in one line. The CPU
    engines run on the tiny bundle with every CPU target exported (tests/conftest.py tiny_cpu_engines)."""
    from mmdeploy.runtime import REGISTRY, backend_reasons, load_predictor
    from mmdeploy.runtime.cpu_record import ENGINES

    if name in ENGINES:
        run = request.getfixturevalue("tiny_cpu_engines")[0]
    backend = REGISTRY[name]
    assert set(backend.needs) <= set(runtime.NEEDS) and name in runtime.CHECKS
    reason = backend_reasons(run, (name,))[name]
    if reason is not None:
        assert reason.strip() and "\n" not in reason
        pytest.skip(f"{name}: {reason}")
    tolerance = 5e-2 if any(p in name for p in ("fp16", "bf16", "int8")) or name == "tensorrt" else 1e-4
    predictor, reference = load_predictor(run, name), load_predictor(run, "torch-cpu")
    audio, video = inputs(predictor.spec, 3, seed=7)
    a, b = predictor.predict(audio, video), reference.predict(audio, video)
    for key in ("fused", "audio", "video"):
        assert a[key].shape == (3, 4)
        np.testing.assert_allclose(a[key], b[key], atol=tolerance)


def test_auto_order_names_registered_backends():
    assert set(runtime.AUTO_ORDER) <= set(runtime.REGISTRY)
    assert all(set(f) <= set(runtime.REGISTRY) for f in runtime.FAMILIES.values())


def test_batches_over_max_batch_run_in_chunks(run, cpu_only):
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(run, "onnxruntime-cpu")
    audio, video = inputs(predictor.spec, 5)
    whole = predictor.logits(audio, video)
    predictor.max_batch = 2
    chunked = predictor.logits(audio, video)
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], atol=1e-6)


def test_wrong_input_shape_is_named(run, cpu_only):
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(run, "torch-cpu")
    audio, video = inputs(predictor.spec, 2)
    with pytest.raises(ValueError, match=r"audio: expected \[B, 1, 32, 126\]"):
        predictor.predict(audio[:, :, :16], video)
    with pytest.raises(ValueError, match="same batch size"):
        predictor.predict(audio, video[:1])


def test_torch_cpu_refuses_fp16_and_graphs(tiny_spec):
    import torch

    from mmdeploy.models import build_model
    from mmdeploy.runtime.torch_backend import TorchPredictor
    from tests.conftest import TINY_ARCH

    with pytest.raises(ValueError, match="need device='cuda'"):
        TorchPredictor(build_model(TINY_ARCH, 4), CLASSES, tiny_spec, device="cpu", fp16=True)
    assert not torch.cuda.is_available() or TorchPredictor(
        build_model(TINY_ARCH, 4), CLASSES, tiny_spec, device="cuda", fp16=True, graph_batches=(1, 8)
    ).backend == "torch-cuda-fp16-graphs"


def test_ort_session_uses_all_cores(run):
    from mmdeploy.runtime.ort_backend import OrtPredictor, cores

    predictor = OrtPredictor(run / "export" / "model.onnx")
    assert predictor.providers == ("CPUExecutionProvider",)
    assert predictor.session.get_session_options().intra_op_num_threads == cores()


def test_doctor_names_every_backend_and_why(monkeypatch, capsys):
    from mmdeploy import runtime

    monkeypatch.setitem(runtime.CHECKS, "tensorrt", lambda: "TensorRT is not installed; faked")
    info = runtime.doctor()
    assert {"torch", "onnxruntime", "tensorrt", "av", "bentoml"} <= set(info["versions"])
    assert set(info["backends"]) == set(runtime.BACKENDS)
    assert info["backends"]["tensorrt"] == {"usable": False, "reason": "TensorRT is not installed; faked"}
    assert info["backends"]["torch-cpu"] == {"usable": True, "reason": None}
    assert "CPUExecutionProvider" in info["onnxruntime_providers"]

    code, out, _ = _main(monkeypatch, capsys, "doctor", "--json")
    assert code == 0 and json.loads(out)["backends"]["tensorrt"]["usable"] is False
    code, out, _ = _main(monkeypatch, capsys, "doctor")
    assert code == 0 and "onnxruntime" in out and "tensorrt" in out and "faked" in out


GPU_CHECK_ON_A_BARE_MACHINE = r"""
import sys, runpy
for name in ("av", "bentoml", "onnxruntime", "tensorrt", "safetensors", "yaml", "typer"):
    sys.modules[name] = None  # absent on the GPU machine: importing any of them fails
g = runpy.run_path("benchmarks/gpu_check.py")
assert g["main"]([]) == 0
from mmdeploy.models import build_model
from mmdeploy.runtime.torch_backend import TorchPredictor
from mmdeploy.spec import preset
spec = preset("synth").replace(frame_height=32, frame_width=32, n_mels=32)
p = TorchPredictor(build_model(g["SYNTH_CPU_ARCH"], 3), ["a", "b", "c"], spec)
audio, video = g["inputs"](spec, 2)
r = g["parity"](p.logits(audio, video), p.logits(audio, video))
assert r["max_abs_diff"] == 0 and r["top1_agreement"] == 1 and r["ok"], r
assert not g["parity"]({"fused": audio[:, 0, 0, :3]}, {"fused": audio[:, 0, 0, :3] + 10})["ok"]
assert len(g["latency_ms"](p, audio, video, 0.0, min_iters=2)) == 2
print("cpu parts ok")
"""


def test_gpu_check_runs_with_torch_alone_and_exits_0_without_cuda():
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", GPU_CHECK_ON_A_BARE_MACHINE], cwd=repo, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU visible to torch" in result.stdout and "cpu parts ok" in result.stdout


# ---- integrity: a tampered bundle is refused on every backend, never skipped -----------------------
@pytest.fixture
def copy(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _set_meta(run, **changes):
    meta = json.loads((run / "model.json").read_text())
    meta.update(changes)
    (run / "model.json").write_text(json.dumps(meta))


def _rewrite_onnx_classes(run, classes, record: bool):
    """Change mmdeploy.classes inside model.onnx; with `record`, also put the new file's digest into
    model.json (as someone re-recording the export would)."""
    import hashlib

    import onnx

    path = run / "export" / "model.onnx"
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "mmdeploy.classes":
            prop.value = json.dumps(classes)
    onnx.save_model(model, str(path))
    if record:
        meta = json.loads((run / "model.json").read_text())
        _set_meta(run, export={**meta["export"], "onnx_sha256": hashlib.sha256(path.read_bytes()).hexdigest()})


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "torch"])
def test_cut_class_list_is_refused_by_every_backend(copy, cpu_only, backend):
    """The issue's case: classes cut in model.json; ONNX used to answer with its own list while torch refused."""
    from mmdeploy.errors import BundleError
    from mmdeploy.runtime import load_predictor

    _set_meta(copy, classes=CLASSES[:3], num_classes=3)
    with pytest.raises(BundleError, match=r"model\.json: classes \(3 classes\) differs from the classes the weights"):
        load_predictor(copy, backend)


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_flipped_weights_are_refused_even_when_only_the_onnx_would_run(copy, cpu_only, backend):
    from mmdeploy.errors import BundleError
    from mmdeploy.runtime import load_predictor
    from tests.test_bundle import flip_bytes

    flip_bytes(copy / "model.safetensors")
    with pytest.raises(BundleError, match=r"model\.safetensors: sha256 .* modified"):
        load_predictor(copy, backend)


def test_onnx_metadata_that_differs_from_model_json_is_refused(copy, cpu_only):
    from mmdeploy.errors import BundleError
    from mmdeploy.runtime import load_predictor

    _rewrite_onnx_classes(copy, CLASSES[::-1], record=True)
    for backend in ("auto", "onnxruntime"):
        with pytest.raises(BundleError, match=r"model\.onnx: metadata mmdeploy\.classes differs from model\.json; "
                                              r"re-export"):
            load_predictor(copy, backend)
    assert load_predictor(copy, "torch").classes == CLASSES  # the torch backend never reads the ONNX file


def test_modified_onnx_file_is_refused_by_its_digest(copy, cpu_only, monkeypatch, capsys):
    _rewrite_onnx_classes(copy, CLASSES[:3], record=False)
    code, out, err = _main(monkeypatch, capsys, "classify", "missing.mp4", "--model", str(copy),
                           "--backend", "onnxruntime")
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"error: {copy / 'export' / 'model.onnx'}: sha256") and "modified" in lines[0]


def test_onnx_without_a_recorded_digest_is_skipped_by_auto(copy, cpu_only):
    """An export whose digest model.json does not record (older mmdeploy, or failed parity) is not used."""
    from mmdeploy.runtime import load_predictor

    meta = json.loads((copy / "model.json").read_text())
    meta.pop("export")
    (copy / "model.json").write_text(json.dumps(meta))
    predictor = load_predictor(copy)
    assert predictor.backend == "torch-cpu"
    assert "records no digest" in predictor.skipped["onnxruntime-cpu"]
    with pytest.raises(BackendUnavailable, match="records no digest"):
        load_predictor(copy, "onnxruntime")


def test_onnx_whose_outputs_do_not_match_its_classes_is_refused(run, tmp_path):
    import onnx

    from mmdeploy.errors import MmdeployError
    from mmdeploy.runtime.ort_backend import OrtPredictor

    model = onnx.load(str(run / "export" / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "mmdeploy.classes":
            prop.value = json.dumps(CLASSES + ["epsilon"])
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    with pytest.raises(MmdeployError, match="outputs 4 classes, its metadata lists 5"):
        OrtPredictor(tmp_path / "model.onnx")


def test_tensorrt_path_verifies_the_bundle_and_its_onnx_before_loading_an_engine(copy, monkeypatch):
    """No TensorRT here: the engine loader is replaced by a recorder, so only the checks before it run."""
    from types import SimpleNamespace

    from mmdeploy import runtime
    from mmdeploy.errors import BundleError
    from mmdeploy.runtime import trt_backend

    loaded = []
    monkeypatch.setitem(runtime.CHECKS, "tensorrt", lambda: None)
    monkeypatch.setattr(runtime, "_engine_path", lambda run: run / "export" / "fake.engine")
    monkeypatch.setattr(trt_backend, "TensorRTPredictor",
                        lambda engine, classes, spec: loaded.append(engine) or SimpleNamespace(engine=engine))
    assert runtime.load_predictor(copy, "tensorrt").engine == copy / "export" / "fake.engine"
    _rewrite_onnx_classes(copy, CLASSES[::-1], record=True)
    with pytest.raises(BundleError, match=r"model\.onnx: metadata mmdeploy\.classes differs from model\.json"):
        runtime.load_predictor(copy, "tensorrt")
    assert len(loaded) == 1


def test_every_backend_is_either_cpu_only_or_gpu_only_and_the_ray_engine_schedules_by_it(monkeypatch):
    """Schedulers read the registry's two sets: a CPU engine (openvino-*, onnxruntime-int8) never asks
    Ray for a GPU, a GPU backend always does, and only auto / a family asks the cluster."""
    import sys
    import types

    from mmdeploy.batch.ray_engine import uses_gpu

    assert set(runtime.REGISTRY) == runtime.CPU_ONLY - {"openvino"} | runtime.GPU_ONLY
    assert not runtime.CPU_ONLY & runtime.GPU_ONLY
    asked = []
    fake = types.SimpleNamespace(cluster_resources=lambda: asked.append(1) or {"GPU": 1.0})
    monkeypatch.setitem(sys.modules, "ray", fake)
    for name in runtime.CPU_ONLY | {"ov"}:
        assert uses_gpu(name) is False, name
    for name in runtime.GPU_ONLY | {"trt"}:
        assert uses_gpu(name) is True, name
    assert not asked
    assert uses_gpu("auto") and uses_gpu("onnxruntime") and len(asked) == 2
