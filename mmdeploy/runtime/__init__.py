"""Predictor backends and `load_predictor(run, backend="auto")`.

`auto` takes the first usable of AUTO_ORDER: TensorRT -> ONNX Runtime CUDA -> torch CUDA fp16 ->
ONNX Runtime CPU -> torch CPU. ONNX Runtime and TensorRT need files made by `mmdeploy export` (RUN/export/
model.onnx exported from the bundle's current weights, a matching engine); when they are missing or stale,
`auto` skips that backend with the reason (it never exports on the fly: exporting takes a while and checks
parity, which is the export command's job).
Before any backend runs, the bundle is verified (mmdeploy.bundle: pickle files, weights digest, input
shapes, classes/spec sealed in the weights; for ONNX Runtime and TensorRT also the ONNX file's digest and
metadata against model.json): a tampered bundle raises BundleError on every backend, it is never skipped.
Availability is decided by the functions in CHECKS (library and device) and `artifact_reason`
(files), so tests can fake them.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from mmdeploy.errors import BackendUnavailable
from mmdeploy.runtime.base import Predictor

__all__ = ["AUTO_ORDER", "BACKENDS", "CHECKS", "Predictor", "backend_reasons", "doctor", "load_predictor",
           "select_backend"]

ONNX_FILE = "model.onnx"
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda-fp16", "onnxruntime-cpu", "torch-cpu")
BACKENDS = (*AUTO_ORDER, "onnxruntime-tensorrt", "torch-cuda")
ALIASES = {"trt": "tensorrt", "ort": "onnxruntime", "onnx": "onnxruntime"}
FAMILIES = {"onnxruntime": ("onnxruntime-cuda", "onnxruntime-cpu"), "torch": ("torch-cuda-fp16", "torch-cpu")}


def _cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch (torch.cuda.is_available() is False)"
    return None


def _ort_reason(provider: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed; pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"
    if provider not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} has no {provider} (has {', '.join(ort.get_available_providers())}); "
                "install onnxruntime-gpu on a CUDA machine")
    return None


def _tensorrt_reason() -> str | None:
    from mmdeploy.runtime.trt_files import tensorrt_reason

    return tensorrt_reason()


CHECKS = {
    "tensorrt": _tensorrt_reason,
    "onnxruntime-tensorrt": lambda: _ort_reason("TensorrtExecutionProvider"),
    "onnxruntime-cuda": lambda: _ort_reason("CUDAExecutionProvider"),
    "onnxruntime-cpu": lambda: _ort_reason("CPUExecutionProvider"),
    "torch-cuda-fp16": _cuda_reason,
    "torch-cuda": _cuda_reason,
    "torch-cpu": lambda: None,
}


def _engine_path(run: Path) -> Path | None:
    from mmdeploy.runtime.trt_files import current_device, file_sha256, find_engine

    onnx_path = run / "export" / ONNX_FILE
    if not onnx_path.is_file():
        return None
    gpu, version = current_device()
    return find_engine(run / "export", gpu, version, file_sha256(onnx_path))


def _onnx_reason(run: Path) -> str | None:
    """Why RUN/export/model.onnx cannot serve this bundle: missing, exported from other weights than the
    ones model.json records, or never recorded by `mmdeploy export`. (Whether the files are intact is
    checked when the backend is built: verify_bundle, verify_onnx.)"""
    from mmdeploy.bundle import read_meta
    from mmdeploy.runtime.ort_backend import read_onnx_metadata

    onnx_path = run / "export" / ONNX_FILE
    if not onnx_path.is_file():
        return f"{onnx_path} missing; run `mmdeploy export {run} --onnx`"
    if not (run / "model.json").is_file():
        return None  # not a bundle: building the backend (verify_bundle) says so, in one line
    meta = read_meta(run)
    if read_onnx_metadata(onnx_path)[2].get("mmdeploy.weights_sha256") != meta["weights"]["sha256"]:
        return f"{onnx_path} was exported from other weights than {run / 'model.safetensors'}; " \
               f"run `mmdeploy export {run} --onnx`"
    if not isinstance(meta.get("export"), dict) or "onnx_sha256" not in meta["export"]:
        return f"model.json records no digest for {onnx_path}; run `mmdeploy export {run} --onnx`"
    return None


def artifact_reason(name: str, run: Path) -> str | None:
    """Why the run lacks the files `name` needs (only called once the library check passed)."""
    if name.startswith("onnxruntime") or name == "tensorrt":
        reason = _onnx_reason(run)
        if reason:
            return reason
    if name == "tensorrt" and _engine_path(run) is None:
        return f"no TensorRT engine in {run / 'export'} for this GPU and TensorRT version; " \
               f"run `mmdeploy export {run} --trt`"
    return None


def backend_reasons(run: str | Path | None = None, names: tuple[str, ...] = BACKENDS) -> dict[str, str | None]:
    """{backend: None if usable, else the reason}; with `run`, also checks the run's exported files."""
    reasons = {}
    for name in names:
        reason = CHECKS[name]()
        if reason is None and run is not None:
            reason = artifact_reason(name, Path(run))
        reasons[name] = reason
    return reasons


def select_backend(run: str | Path, backend: str = "auto") -> tuple[str, dict[str, str]]:
    """(chosen backend, {skipped backend: reason}); raises BackendUnavailable when nothing fits."""
    backend = ALIASES.get(backend, backend)
    candidates = AUTO_ORDER if backend == "auto" else FAMILIES.get(backend, (backend,))
    if any(c not in CHECKS for c in candidates):
        raise BackendUnavailable(f"backend {backend!r}: unknown; choose auto, onnxruntime, torch, "
                                 f"or one of {', '.join(BACKENDS)}")
    skipped = {}
    for name in candidates:
        reason = backend_reasons(run, (name,))[name]
        if reason is None:
            return name, skipped
        skipped[name] = reason
    if len(skipped) == 1:
        raise BackendUnavailable(f"backend {backend}: {next(iter(skipped.values()))}")
    raise BackendUnavailable(f"backend {backend}: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))


def load_predictor(run: str | Path, backend: str = "auto", graph_batches: tuple[int, ...] = (),
                   threads: int | None = None) -> Predictor:
    """A Predictor for the bundle at `run` on `backend` (auto | onnxruntime | torch | one of BACKENDS).
    `graph_batches` (torch CUDA only): batch sizes to capture as CUDA graphs; `threads` (ONNX Runtime
    only): intra-op threads, default = cores."""
    run = Path(run)
    name, skipped = select_backend(run, backend)
    predictor = _build(name, run, graph_batches, threads)
    predictor.skipped = skipped
    return predictor


def _build(name: str, run: Path, graph_batches: tuple[int, ...], threads: int | None) -> Predictor:
    from mmdeploy.bundle import load_bundle

    if name.startswith("onnxruntime"):
        from mmdeploy.bundle import verify_bundle
        from mmdeploy.runtime.ort_backend import OrtPredictor

        meta = verify_bundle(run)  # pickle files, weights digest, shapes, seal: refused before the ONNX runs
        return OrtPredictor(run / "export" / ONNX_FILE, name, threads, meta=meta)
    bundle = load_bundle(run, with_model=name.startswith("torch"))  # verified, like verify_bundle
    if name == "tensorrt":
        from mmdeploy.runtime.ort_backend import verify_onnx
        from mmdeploy.runtime.trt_backend import TensorRTPredictor

        verify_onnx(run / "export" / ONNX_FILE, bundle.meta)  # the engine is named by this file's hash
        return TensorRTPredictor(_engine_path(run), bundle.classes, bundle.spec)
    from mmdeploy.runtime.torch_backend import TorchPredictor

    device = "cpu" if name == "torch-cpu" else "cuda"
    return TorchPredictor(bundle.model, bundle.classes, bundle.spec, device=device, fp16=name == "torch-cuda-fp16",
                          graph_batches=graph_batches if device == "cuda" else ())


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                 "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12")}.get(module, (module,)):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def doctor() -> dict[str, Any]:
    """What can run here: package versions, GPU, ONNX Runtime providers, and each backend's status."""
    import torch

    versions = {m: _version(m) for m in ("torch", "onnx", "onnxruntime", "tensorrt", "av", "bentoml")}
    versions["python"] = platform.python_version()
    gpu = {"cuda": torch.cuda.is_available(), "name": torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else None, "torch_cuda_build": torch.version.cuda}
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    reasons = backend_reasons()
    return {"versions": versions, "gpu": gpu, "onnxruntime_providers": providers, "auto_order": list(AUTO_ORDER),
            "backends": {k: {"usable": v is None, "reason": v} for k, v in reasons.items()}}
