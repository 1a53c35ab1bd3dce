"""TensorRT engine naming, profiles, invalidation and fallbacks (no TensorRT needed); a real build only
where TensorRT and a CUDA GPU exist."""
from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from mmdeploy import tensorrt_engine as te
from mmdeploy.runtime import trt_files

PROFILE = {"min": 1, "opt": 8, "max": 32}
BASE = dict(gpu="NVIDIA H100 80GB HBM3", trt_version="10.13.0.35", precision="fp16", profile=PROFILE,
            onnx_sha="3f2a9c1d0b7e" + "0" * 52)


def test_engine_name_carries_everything_that_makes_an_engine_valid():
    assert trt_files.engine_name(**BASE) == "nvidia-h100-80gb-hbm3_trt10.13.0.35_fp16_b1-8-32_3f2a9c1d0b7e.engine"


@pytest.mark.parametrize("change", [
    {"gpu": "NVIDIA A100-SXM4-40GB"}, {"trt_version": "10.14.1.48"}, {"precision": "fp32"},
    {"profile": {"min": 1, "opt": 16, "max": 64}}, {"onnx_sha": "aa" * 32},
])
def test_any_mismatch_gives_another_name(change):
    assert trt_files.engine_name(**{**BASE, **change}) != trt_files.engine_name(**BASE)


def test_find_engine_loads_only_a_matching_engine(tmp_path):
    for kw in (BASE, {**BASE, "gpu": "Tesla T4"}, {**BASE, "trt_version": "8.6.1"}, {**BASE, "onnx_sha": "bb" * 32}):
        (tmp_path / trt_files.engine_name(**kw)).write_bytes(b"x")
    found = trt_files.find_engine(tmp_path, BASE["gpu"], BASE["trt_version"], BASE["onnx_sha"])
    assert found.name == trt_files.engine_name(**BASE)
    assert trt_files.find_engine(tmp_path, "NVIDIA L4", BASE["trt_version"], BASE["onnx_sha"]) is None
    assert trt_files.find_engine(tmp_path, BASE["gpu"], "10.0.0", BASE["onnx_sha"]) is None
    assert trt_files.find_engine(tmp_path, BASE["gpu"], BASE["trt_version"], "cc" * 32) is None
    (tmp_path / trt_files.engine_name(**{**BASE, "precision": "fp32"})).write_bytes(b"x")
    assert "_fp16_" in trt_files.find_engine(tmp_path, BASE["gpu"], BASE["trt_version"], BASE["onnx_sha"]).name
    assert "_fp32_" in trt_files.find_engine(tmp_path, BASE["gpu"], BASE["trt_version"], BASE["onnx_sha"], "fp32").name


def test_profile_shapes_follow_the_spec(tiny_spec):
    shapes = te.profile_shapes(tiny_spec, PROFILE)
    assert shapes["audio"] == ((1, 1, 32, 126), (8, 1, 32, 126), (32, 1, 32, 126))
    assert shapes["video"] == ((1, 3, 4, 32, 32), (8, 3, 4, 32, 32), (32, 3, 4, 32, 32))


@pytest.fixture
def tiny_onnx(tmp_path, tiny_spec):
    """A one-node ONNX file carrying mmdeploy metadata (all ensure_engine reads besides the hash)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["audio"], ["fused_logits"])], "g",
                              [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("fused_logits", TensorProto.FLOAT, ["b", 4])])
    model = helper.make_model(graph)
    onnx.helper.set_model_props(model, {"mmdeploy.spec": tiny_spec.to_json(), "mmdeploy.classes": '["a","b"]'})
    path = tmp_path / "export" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    return path


@pytest.fixture
def fake_builder(monkeypatch):
    """Fake the device and the TensorRT build; record every build."""
    device = {"gpu": "NVIDIA H100 80GB HBM3", "trt": "10.13.0.35"}
    builds = []

    def build(onnx_path, engine_path, precision, shapes, fp32_layers, timing_cache):
        builds.append(SimpleNamespace(engine=engine_path, precision=precision, shapes=shapes, cache=timing_cache,
                                      fp32_layers=fp32_layers))
        engine_path.write_bytes(b"engine")
        return engine_path

    monkeypatch.setattr(te, "current_device", lambda: (device["gpu"], device["trt"]))  # the builder's view
    monkeypatch.setattr(trt_files, "current_device", lambda: (device["gpu"], device["trt"]))  # the runtime's
    monkeypatch.setattr(te, "build_engine", build)
    return device, builds


def test_engine_is_built_once_then_reused_and_rebuilt_on_any_mismatch(tiny_onnx, fake_builder):
    device, builds = fake_builder
    out = tiny_onnx.parent
    path, built = te.ensure_engine(tiny_onnx, out, "fp16", PROFILE, ("reduce",))
    assert built and path.is_file() and builds[-1].fp32_layers == ("reduce",)
    assert builds[-1].cache == out / "nvidia-h100-80gb-hbm3_trt10.13.0.35.timing-cache"
    assert builds[-1].shapes["audio"][2] == (32, 1, 32, 126)
    assert te.ensure_engine(tiny_onnx, out, "fp16", PROFILE) == (path, False)
    names = {path.name}
    for step in ("precision", "gpu", "trt", "onnx"):
        if step == "gpu":
            device["gpu"] = "NVIDIA A10G"
        elif step == "trt":
            device["trt"] = "10.14.1.48"
        elif step == "onnx":
            import onnx

            model = onnx.load(str(tiny_onnx))
            model.doc_string = "re-exported"  # same metadata, another file hash
            onnx.save(model, str(tiny_onnx))
        new, built = te.ensure_engine(tiny_onnx, out, "fp32" if step == "precision" else "fp16", PROFILE)
        assert built and new.name not in names
        names.add(new.name)
    assert len(builds) == 5


def test_runtime_finds_the_matching_engine_only(tiny_onnx, fake_builder, monkeypatch):
    from mmdeploy import runtime

    device, _ = fake_builder
    run = tiny_onnx.parent.parent
    monkeypatch.setitem(runtime.CHECKS, "tensorrt", lambda: None)
    assert "no TensorRT engine" in runtime.artifact_reason("tensorrt", run)
    te.ensure_engine(tiny_onnx, tiny_onnx.parent, "fp16", PROFILE)
    assert runtime.artifact_reason("tensorrt", run) is None
    device["trt"] = "11.0.0"  # an upgraded TensorRT must not load the old engine
    assert "no TensorRT engine" in runtime.artifact_reason("tensorrt", run)


def test_pin_fp32_touches_only_the_asked_layer_kinds():
    trt = SimpleNamespace(float32="float32", LayerType=SimpleNamespace(
        SOFTMAX="softmax", NORMALIZATION="norm", REDUCE="reduce", POOLING="pool", CONVOLUTION="conv"))

    class Layer:
        def __init__(self, kind):
            self.type, self.precision, self.num_outputs, self.outputs = kind, None, 1, {}

        def set_output_type(self, i, dtype):
            self.outputs[i] = dtype

    layers = [Layer(k) for k in ("conv", "reduce", "softmax", "pool")]
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    te._pin_fp32(trt, network, ("reduce", "softmax"))
    assert [(l.precision, l.outputs.get(0)) for l in layers] == [
        (None, None), ("float32", "float32"), ("float32", "float32"), (None, None)]


def test_reason_without_tensorrt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    reason = trt_files.tensorrt_reason()
    assert "not installed" in reason and "pip install tensorrt --extra-index-url https://pypi.nvidia.com" in reason


HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT is not installed (pip install tensorrt --extra-index-url "
                                         "https://pypi.nvidia.com on a CUDA machine)")
def test_real_engine_build_and_parity(tiny_exported):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    from mmdeploy.bundle import load_bundle
    from mmdeploy.export import example_inputs, torch_logits
    from mmdeploy.runtime.trt_backend import TensorRTPredictor
    run = tiny_exported[0]
    bundle = load_bundle(run)
    profile = {"min": 1, "opt": 4, "max": 8}
    for precision, tol in (("fp32", 1e-3), ("fp16", 5e-2)):
        engine, built = te.ensure_engine(run / "export" / "model.onnx", run / "export", precision, profile, ("reduce",))
        assert built and te.ensure_engine(run / "export" / "model.onnx", run / "export", precision, profile)[1] is False
        predictor = TensorRTPredictor(engine, bundle.classes, bundle.spec)
        assert predictor.backend == f"tensorrt-{precision}" and predictor.max_batch == 8
        audio, video = example_inputs(bundle.spec, 11)  # over the profile max: runs in chunks
        got, want = predictor.logits(audio, video), torch_logits(bundle.model, audio, video)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=tol * max(1.0, np.abs(want[key]).max()))
