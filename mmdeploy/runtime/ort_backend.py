"""ONNX Runtime backend: RUN/export/model.onnx on the CPU, CUDA or TensorRT execution provider.

Classes and ClipSpec come from the ONNX metadata, so this backend needs no PyTorch weights."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from mmdeploy.errors import MmdeployError
from mmdeploy.runtime.base import OUTPUT_NAMES, OUTPUTS, Predictor
from mmdeploy.spec import ClipSpec

BACKEND_PROVIDERS = {"onnxruntime-cpu": ("CPUExecutionProvider",),
                     "onnxruntime-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
                     "onnxruntime-tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                              "CPUExecutionProvider")}


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def usable_providers(wanted: tuple[str, ...]) -> tuple[str, ...]:
    """`wanted` filtered to the providers this onnxruntime build has, CPU always last as the fallback."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    kept = tuple(p for p in wanted if p in have and p != "CPUExecutionProvider")
    return (*kept, "CPUExecutionProvider")


def read_onnx_metadata(path: str | Path) -> tuple[ClipSpec, list[str], dict[str, str]]:
    """(spec, classes, all metadata_props) of an ONNX file written by `mmdeploy export`."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "mmdeploy.spec" not in props or "mmdeploy.classes" not in props:
        raise MmdeployError(f"{path}: ONNX file has no mmdeploy metadata; re-export with `mmdeploy export RUN`")
    return ClipSpec.from_json(props["mmdeploy.spec"]), json.loads(props["mmdeploy.classes"]), props


def make_session(path: str | Path, providers: tuple[str, ...], threads: int | None = None):
    """An InferenceSession with all graph optimisations and intra-op threads = cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cores()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


class OrtPredictor(Predictor):
    def __init__(self, onnx_path: str | Path, backend: str = "onnxruntime-cpu", threads: int | None = None):
        self.spec, self.classes, self.metadata = read_onnx_metadata(onnx_path)
        self.session = make_session(onnx_path, BACKEND_PROVIDERS[backend], threads)
        self.backend = backend
        self.providers = tuple(self.session.get_providers())
        self._names = list(OUTPUT_NAMES)

    def _logits(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._names, {"audio": audio, "video": video})
        return dict(zip(OUTPUTS, values))
