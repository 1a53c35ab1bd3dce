"""OpenVINO backend: an ONNX file compiled for this CPU (RUN/export/model.onnx, or the int8 QDQ file that
`mmdeploy export RUN --target openvino-int8` made), with a precision hint (fp32 -> f32, bf16 -> bf16; an int8
file runs its int8 layers in int8 and the rest in f32), INFERENCE_NUM_THREADS = the cores it is given
(settings.cpu_count() by default), one stream (callers run one batch at a time), and the ONNX file's dynamic
batch axis kept, so any batch size runs.

Compiled models are cached as files beside the ONNX file, named by everything that makes one valid
(`cache_name`: CPU model + its int8/bf16 features, OpenVINO version, precision, sha256 of the source file):
another CPU, OpenVINO release or source file gives another name, so a stale cache is never looked for.
Which cache files a bundle may load, and their digests, are recorded in model.json by `mmdeploy export`
(mmdeploy/runtime/cpu_record.py checks them before anything is imported). Imports openvino lazily, never torch.
"""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mmdeploy.errors import BackendUnavailable
from mmdeploy.runtime.base import INPUTS, OUTPUT_NAMES, OUTPUTS, Predictor
from mmdeploy.settings import cpu_count
from mmdeploy.spec import ClipSpec

INSTALL_HINT = "install the extra: pip install 'mmdeploy-av[openvino]' (from a checkout: uv sync --extra openvino)"
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # mmdeploy precision -> INFERENCE_PRECISION_HINT
CACHE_SUFFIX = ".ovblob"
_CORE: Any = None


def openvino_reason() -> str | None:
    """None when OpenVINO and its CPU plugin are usable here, else why not and the fix."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return f"OpenVINO is not installed; {INSTALL_HINT}"
    try:
        devices = core().available_devices
    except Exception as exc:  # noqa: BLE001 - a plugin that does not load is the finding
        return f"OpenVINO {version()} does not load its CPU plugin ({type(exc).__name__}: {exc})"
    if "CPU" not in devices:
        return f"OpenVINO {version()} sees no CPU device (has {', '.join(devices) or 'none'})"
    return None


def core():
    """The process's one openvino.Core (plugins load once)."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def version() -> str:
    """OpenVINO's release, e.g. 2026.4.1 (the package version, without the build suffix)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("openvino")
    except PackageNotFoundError:
        import openvino

        return openvino.__version__.split("-")[0]


def cache_name(cpu_key: str, ov_version: str, precision: str, source_sha256: str, batch: int | None = None) -> str:
    """e.g. `amd-epyc-9673261b_ov2026.4.1_int8_3f2a9c1d0b7e.ovblob` (dynamic batch), `..._int8-b1_...` (static 1)."""
    shape = f"-b{batch}" if batch else ""
    return f"{cpu_key}_ov{ov_version}_{precision}{shape}_{source_sha256[:12]}{CACHE_SUFFIX}"


def config(precision: str, threads: int | None = None) -> dict[str, Any]:
    """compile_model properties: the precision hint, threads = the cores given, one stream, latency first."""
    if precision not in HINTS:
        raise ValueError(f"precision {precision!r}: OpenVINO CPU targets take {', '.join(HINTS)}")
    return {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": int(threads or cpu_count()),
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}


def compile_file(source: str | Path, precision: str, threads: int | None = None, batch: int | None = None):
    """Read an ONNX file and compile it for the CPU: dynamic batch kept, or reshaped to a static `batch`
    (batch 1 runs several times faster static on small models: no shape inference per call)."""
    model = core().read_model(str(source))
    if batch is not None:
        model.reshape({i.get_any_name(): [batch, *list(i.get_partial_shape())[1:]] for i in model.inputs})
    return core().compile_model(model, "CPU", config(precision, threads))


def import_blob(data: bytes, precision: str, threads: int | None = None):
    """A compiled model from the bytes of a cache file (already checked against its recorded digest)."""
    return core().import_model(io.BytesIO(data), "CPU", config(precision, threads))


def write_blob(compiled, path: str | Path) -> bytes:
    """Export a compiled model to `path` atomically; returns the bytes written (to digest)."""
    data = compiled.export_model()
    data = data.getvalue() if hasattr(data, "getvalue") else bytes(data)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


class OpenVINOPredictor(Predictor):
    """A compiled OpenVINO model behind the Predictor interface. `compiled` (dynamic batch) and `single` (the
    same model at a static batch of 1, optional) come from compile_file or import_blob; `backend` is the
    registry name (openvino-cpu, openvino-bf16, openvino-int8)."""

    def __init__(self, compiled, classes: list[str], spec: ClipSpec, backend: str, precision: str,
                 source: str = "", single=None):
        names = [sorted(o.get_names()) for o in compiled.outputs]
        if not all(any(n in want for want in names) for n in OUTPUT_NAMES) or \
                sorted(i.get_any_name() for i in compiled.inputs) != sorted(INPUTS):
            raise BackendUnavailable(f"{source or 'model'}: inputs/outputs are not audio, video -> "
                                     f"{', '.join(OUTPUT_NAMES)}; re-export with `mmdeploy export RUN`")
        self.compiled, self.classes, self.spec = compiled, list(classes), spec
        self.backend, self.precision, self.source = backend, precision, source
        self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        self._request = compiled.create_infer_request()
        self._single = single.create_infer_request() if single is not None else None
        self._lock = threading.Lock()  # one infer request each: calls from threads take turns

    def _logits(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        request = self._single if len(audio) == 1 and self._single is not None else self._request
        with self._lock:
            result = request.infer({"audio": audio, "video": video})
            # the request's output buffers are reused by the next call: copy out
            return {o: np.array(result[n], dtype=np.float32, copy=True) for o, n in zip(OUTPUTS, OUTPUT_NAMES)}
