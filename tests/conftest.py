"""Shared fixtures: the real media folder, small specs, a tiny random-weight bundle."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_sessionstart(session):
    """Fail fast on a broken environment: one line per package that does not load or breaks its pin, instead
    of dozens of failures deep inside training and serving (mmdeploy/environment.py)."""
    from mmdeploy.environment import problems

    broken = problems()
    if broken:
        pytest.exit("broken environment:\n" + "\n".join(broken), returncode=3)

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"

TINY_ARCH = {"audio": {"type": "resnet", "width": 8, "layers": [1, 1, 1, 1]},
             "video": {"type": "resnet", "width": 8, "layers": [1, 1, 1, 1]},
             "fusion": {"type": "late"}}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on 2 shared cores: one intra-op thread is much faster than two fighting for a core.
    Use per module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cpu_only(monkeypatch):
    """Make the GPU backends (runtime.GPU_ONLY) unavailable whatever machine runs the tests."""
    from mmdeploy import runtime

    for name in runtime.GPU_ONLY:
        monkeypatch.setitem(runtime.CHECKS, name, lambda name=name: f"{name} faked off")


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """../shared/media beside the clone (CI lays it there). Never copied into the repository."""
    if not MEDIA.is_dir():
        pytest.fail(f"{MEDIA} not found: the tests read real clips from ../shared/media beside the clone")
    return MEDIA


@pytest.fixture(scope="session")
def tiny_spec():
    from mmdeploy.spec import preset

    return preset("synth").replace(frame_height=32, frame_width=32, n_mels=32)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_spec) -> Path:
    """A bundle with random weights and a tiny architecture: enough for export, runtime and serving tests."""
    import torch

    from mmdeploy.bundle import save_bundle
    from mmdeploy.models import build_model

    torch.manual_seed(0)
    classes = ["alpha", "beta", "gamma", "delta"]
    model = build_model(TINY_ARCH, len(classes)).eval()
    run = tmp_path_factory.mktemp("tiny_run")
    save_bundle(run, model, classes, tiny_spec, method={"name": "mlb", "alpha": 0.8})
    return run


@pytest.fixture(scope="session")
def tiny_exported(tiny_bundle, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the tiny bundle exported once per session (ONNX + parity.json) and the export summary.
    Shared by the export, runtime, TensorRT and serving tests: read it, copy it to change it."""
    from mmdeploy.export import export

    run = tmp_path_factory.mktemp("tiny_exported") / "run"
    shutil.copytree(tiny_bundle, run)
    return run, export(run)


@pytest.fixture(scope="session")
def ray_local():
    """One small local Ray instance for the session (batch and cache tests); its temp dir and logs live in
    /tmp, outside the repository."""
    import tempfile

    ray = pytest.importorskip("ray")
    from mmdeploy.raycluster import connect

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    connect(cpus=2, temp_dir=temp, attempts=3)  # retries when a loaded machine misses Ray's start-up deadline
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


CPU_ENGINE_TARGETS = ("onnx-int8", "openvino-int8", "openvino-bf16", "openvino-fp32")


@pytest.fixture(scope="session")
def tiny_cpu_engines(tiny_exported, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the exported tiny bundle with every CPU engine target exported (int8 files, OpenVINO caches,
    gate reports, timing record), once per session; {target: export summary}. Read it, copy it to change it.
    Without OpenVINO (the `openvino` extra) only onnx-int8 is made."""
    import dataclasses
    from importlib.util import find_spec

    from mmdeploy.export import export, load_target

    run = tmp_path_factory.mktemp("tiny_cpu_engines") / "run"
    shutil.copytree(tiny_exported[0], run)
    made = {}
    for name in CPU_ENGINE_TARGETS:
        if name.startswith("openvino") and find_spec("openvino") is None:
            continue
        target = load_target(name)  # one quantizer here (NNCF has its own test): the session fixture stays quick
        target = dataclasses.replace(target, calibration={**target.calibration, "quantizer": "onnxruntime"})
        made[name] = export(run, target=target, onnx=False, timing_seconds=0.02)
    return run, made
