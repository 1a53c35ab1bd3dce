"""Predictor backends and `load_predictor(run, backend="auto")`.

Backends are entries of REGISTRY (name -> Backend: the library/device check, the exported files it needs,
how to build its Predictor); adding a runtime (OpenVINO, an int8 engine) is adding an entry, and the tests
are parametrized over the registry. `auto` takes the first usable of AUTO_ORDER: TensorRT -> ONNX Runtime
CUDA -> torch CUDA fp16 -> [CPU engines] -> ONNX Runtime CPU -> torch CPU, where [CPU engines] are the
OpenVINO / int8 engines `mmdeploy export` made, accuracy-gated and timed on this CPU faster than ONNX Runtime
fp32, fastest first (runtime/cpu_record.py; none without such a record). ONNX Runtime and TensorRT need files made by
`mmdeploy export` (RUN/export/model.onnx exported from the bundle's current weights, a matching engine);
when they are missing or stale, `auto` skips that backend with the reason (it never exports on the fly:
exporting takes a while and checks parity, which is the export command's job).
Before any backend runs, the bundle is verified (mmdeploy.bundle: pickle files, weights digest, input
shapes, classes/spec sealed in the weights; for ONNX Runtime and TensorRT also the ONNX file's digest and
metadata against model.json): a tampered bundle raises BundleError on every backend, it is never skipped.
Availability is decided by the functions in CHECKS (library and device, from the registry) and
`artifact_reason` (files), so tests can fake them.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmdeploy.errors import BackendUnavailable
from mmdeploy.runtime.base import Predictor

__all__ = ["AUTO_ORDER", "BACKENDS", "CHECKS", "CHOICES", "CPU_ONLY", "GPU_ONLY", "REGISTRY", "Backend", "Predictor", "backend_reasons",
           "doctor", "explain", "load_predictor", "select_backend"]

ONNX_FILE = "model.onnx"
ALIASES = {"trt": "tensorrt", "ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino"}
FAMILIES = {"onnxruntime": ("onnxruntime-cuda", "onnxruntime-cpu"), "torch": ("torch-cuda-fp16", "torch-cpu"),
            "openvino": ("openvino-int8", "openvino-bf16", "openvino-cpu")}  # openvino: ranked by the record
CPU_TIER = "onnxruntime-cpu"  # auto puts the measured-faster CPU engines right before this one


def _nvidia_device() -> bool:
    """Whether this machine shows an NVIDIA GPU at all (a driver device node, or WSL's GPU device), decided
    without importing torch: on a CPU machine `auto` then passes the torch CUDA backends over without loading
    torch (2-3 s of a cold `mmdeploy classify` on ONNX Runtime or OpenVINO)."""
    import glob
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*") or os.path.exists("/dev/dxg"))


def _cuda_reason() -> str | None:
    if not _nvidia_device():
        return "no NVIDIA GPU on this machine (no /dev/nvidia* device), so no CUDA GPU for torch"
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
    for need in REGISTRY[name].needs:
        reason = NEEDS[need](run)
        if reason:
            return reason
    return None


def _engine_reason(run: Path) -> str | None:
    if _engine_path(run) is None:
        return f"no TensorRT engine in {run / 'export'} for this GPU and TensorRT version; " \
               f"run `mmdeploy export {run} --trt`"
    return None


def _cpu_engine_reason(name: str):
    def reason(run: Path) -> str | None:
        from mmdeploy.runtime.cpu_record import artifact_reason as cpu_artifact_reason

        return cpu_artifact_reason(name, run)

    return reason


NEEDS = {"onnx": _onnx_reason, "tensorrt-engine": _engine_reason,  # exported files, by what checks them
         **{f"cpu-engine:{n}": _cpu_engine_reason(n) for n in ("openvino-int8", "openvino-bf16", "onnxruntime-int8",
                                                              "openvino-cpu")}}


def backend_reasons(run: str | Path | None = None, names: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """{backend: None if usable, else the reason} (every registered one by default); with `run`, also checks
    the run's exported files."""
    reasons = {}
    for name in names or BACKENDS:
        reason = CHECKS[name]()
        if reason is None and run is not None:
            reason = artifact_reason(name, Path(run))
        reasons[name] = reason
    return reasons


CHOICES = ("auto", *FAMILIES, "tensorrt", *ALIASES)  # what --backend takes besides the registry's names


def _measured_cpu_engines(run: Path) -> tuple[list[str], dict[str, str], str]:
    """The recorded CPU engines timed faster than onnxruntime-cpu on this CPU, fastest first; {engine: why
    not}; why the first (runtime/cpu_record.rank). Nothing for a folder that is not a bundle."""
    from mmdeploy.bundle import read_meta
    from mmdeploy.environment import cpu_info
    from mmdeploy.errors import BundleError
    from mmdeploy.runtime.cpu_record import ENGINES, rank

    if not (run / "model.json").is_file():
        return [], {}, ""
    try:
        meta = read_meta(run)
    except BundleError:
        return [], {}, ""  # building the chosen backend (verify_bundle) says what is wrong, in one line
    return rank(meta, str(cpu_info()["key"]), _LazyReasons(run))


class _LazyReasons(dict):
    """{engine: backend_reasons(...)} computed on first `get`: rank asks only about engines the bundle's
    record times, so a bundle without CPU engines never imports openvino (0.2-0.9 s of a cold CLI)."""

    def __init__(self, run: Path):
        super().__init__()
        self.run = run

    def get(self, name, default=None):
        if name not in self:
            self[name] = backend_reasons(self.run, (name,))[name]
        return dict.get(self, name, default)


def select_backend(run: str | Path, backend: str = "auto") -> tuple[str, dict[str, str]]:
    """(chosen backend, {skipped backend: reason}); raises BackendUnavailable when nothing fits."""
    return _select(Path(run), backend)[:2]


def check_name(backend: str, key: str = "backend") -> str:
    """`backend` if --backend may name it (auto, a family, an alias or a registered backend), else
    BackendUnavailable naming `key` and the choices. Imports nothing: commands call it before any work."""
    name = ALIASES.get(backend, backend)
    candidates = AUTO_ORDER if name == "auto" else FAMILIES.get(name, (name,))
    if any(c not in CHECKS for c in candidates):
        raise BackendUnavailable(f"{key} {backend!r}: unknown; choose auto, onnxruntime, openvino, torch, "
                                 f"or one of {', '.join(BACKENDS)}")
    return backend


def _select(run: Path, backend: str) -> tuple[str, dict[str, str], str]:
    """select_backend, plus why the chosen one (for auto and families that rank CPU engines by the record)."""
    backend = ALIASES.get(check_name(backend), backend)
    candidates = AUTO_ORDER if backend == "auto" else FAMILIES.get(backend, (backend,))
    skipped, why = {}, ""
    if backend in ("auto", "openvino"):
        faster, why_not, why = _measured_cpu_engines(run)
        if backend == "auto":
            i = candidates.index(CPU_TIER)
            candidates = (*candidates[:i], *faster, *candidates[i:])
        else:  # the family: measured-faster members first, then the rest in FAMILIES order
            candidates = (*[n for n in faster if n in candidates], *[n for n in candidates if n not in faster])
        skipped.update({n: r for n, r in why_not.items() if n not in faster})
    for name in candidates:
        reason = backend_reasons(run, (name,))[name]
        if reason is None:
            if not why or not why.startswith(name + ":"):
                why = f"{name}: " + ("the first usable backend of auto's order" if backend == "auto"
                                     else f"as asked (--backend {backend})")
            return name, {k: v for k, v in skipped.items() if k != name}, why
        skipped[name] = reason
    if len(skipped) == 1:
        raise BackendUnavailable(f"backend {backend}: {next(iter(skipped.values()))}")
    raise BackendUnavailable(f"backend {backend}: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))


def explain(run: str | Path, backend: str = "auto") -> dict[str, Any]:
    """{"backend": what `backend` picks for the bundle, "why": the reason, "skipped": {backend: reason}}."""
    name, skipped, why = _select(Path(run), backend)
    return {"backend": name, "why": why, "skipped": skipped}


def load_predictor(run: str | Path, backend: str = "auto", graph_batches: tuple[int, ...] = (),
                   threads: int | None = None) -> Predictor:
    """A Predictor for the bundle at `run` on `backend` (auto | onnxruntime | torch | one of BACKENDS).
    `graph_batches` (torch CUDA only): batch sizes to capture as CUDA graphs; `threads` (ONNX Runtime
    only): intra-op threads, default = cores."""
    run = Path(run)
    name, skipped, why = _select(run, backend)
    predictor = _build(name, run, graph_batches, threads)
    predictor.skipped, predictor.why = skipped, why
    return predictor


def _build(name: str, run: Path, graph_batches: tuple[int, ...], threads: int | None) -> Predictor:
    return REGISTRY[name].build(name, run, graph_batches, threads)


def _build_ort(name: str, run: Path, graph_batches: tuple[int, ...], threads: int | None) -> Predictor:
    from mmdeploy.bundle import verify_bundle
    from mmdeploy.runtime.ort_backend import OrtPredictor

    meta = verify_bundle(run)  # pickle files, weights digest, shapes, seal: refused before the ONNX runs
    return OrtPredictor(run / "export" / ONNX_FILE, name, threads, meta=meta)


def _build_tensorrt(name: str, run: Path, graph_batches: tuple[int, ...], threads: int | None) -> Predictor:
    from mmdeploy.bundle import load_bundle
    from mmdeploy.runtime.ort_backend import verify_onnx
    from mmdeploy.runtime.trt_backend import TensorRTPredictor

    bundle = load_bundle(run, with_model=False)  # verified, like verify_bundle
    verify_onnx(run / "export" / ONNX_FILE, bundle.meta)  # the engine is named by this file's hash
    return TensorRTPredictor(_engine_path(run), bundle.classes, bundle.spec)


def _build_ort_int8(name: str, run: Path, graph_batches: tuple[int, ...], threads: int | None) -> Predictor:
    from mmdeploy.bundle import verify_bundle
    from mmdeploy.runtime.cpu_record import verified_source
    from mmdeploy.runtime.ort_backend import OrtPredictor

    meta = verify_bundle(run)
    source, digest = verified_source(run, meta, name)  # an edited int8 file is refused here, never rebuilt
    return OrtPredictor(source, name, threads, meta=meta, recorded=digest)


def _build_openvino(name: str, run: Path, graph_batches: tuple[int, ...], threads: int | None) -> Predictor:
    from mmdeploy.bundle import verify_bundle
    from mmdeploy.environment import cpu_info
    from mmdeploy.runtime import openvino_backend as ovb
    from mmdeploy.runtime.cpu_record import ENGINES, verified_cache, verified_source
    from mmdeploy.spec import ClipSpec

    meta = verify_bundle(run)
    source, _ = verified_source(run, meta, name)
    precision = ENGINES[name].precision
    key = str(cpu_info()["key"])
    cache = verified_cache(run, meta, name, key)  # edited: refused; another CPU or release: None
    single = verified_cache(run, meta, name, key, batch=1)
    compiled = ovb.import_blob(cache[1], precision, threads) if cache else ovb.compile_file(source, precision, threads)
    one = ovb.import_blob(single[1], precision, threads) if single else ovb.compile_file(source, precision, threads, 1)
    predictor = ovb.OpenVINOPredictor(compiled, meta["classes"], ClipSpec.from_dict(meta["spec"]), name, precision,
                                      str(cache[0] if cache else source), single=one)
    predictor.cache = cache[0] if cache else None
    return predictor


def _openvino_reason() -> str | None:
    from mmdeploy.runtime.openvino_backend import openvino_reason

    return openvino_reason()


def _build_torch(name: str, run: Path, graph_batches: tuple[int, ...], threads: int | None) -> Predictor:
    from mmdeploy.bundle import load_bundle
    from mmdeploy.runtime.torch_backend import TorchPredictor

    bundle = load_bundle(run, with_model=True)  # verified
    device = "cpu" if name == "torch-cpu" else "cuda"
    return TorchPredictor(bundle.model, bundle.classes, bundle.spec, device=device, fp16=name == "torch-cuda-fp16",
                          graph_batches=graph_batches if device == "cuda" else ())


@dataclass(frozen=True)
class Backend:
    """One runtime: `check()` -> None if its library and device are usable here, else why not; `needs`: the
    exported files it runs (keys of NEEDS); `build(name, run, graph_batches, threads)` -> its Predictor."""
    check: Callable[[], str | None]
    build: Callable[[str, Path, tuple[int, ...], int | None], Predictor]
    needs: tuple[str, ...] = ()


REGISTRY: dict[str, Backend] = {
    "tensorrt": Backend(_tensorrt_reason, _build_tensorrt, ("onnx", "tensorrt-engine")),
    "onnxruntime-cuda": Backend(lambda: _ort_reason("CUDAExecutionProvider"), _build_ort, ("onnx",)),
    "torch-cuda-fp16": Backend(_cuda_reason, _build_torch),
    "onnxruntime-cpu": Backend(lambda: _ort_reason("CPUExecutionProvider"), _build_ort, ("onnx",)),
    "torch-cpu": Backend(lambda: None, _build_torch),
    "onnxruntime-tensorrt": Backend(lambda: _ort_reason("TensorrtExecutionProvider"), _build_ort, ("onnx",)),
    "torch-cuda": Backend(_cuda_reason, _build_torch),
    # CPU engines (runtime/cpu_record.py): made, accuracy-gated and timed by `mmdeploy export --target ...`
    "openvino-int8": Backend(_openvino_reason, _build_openvino, ("onnx", "cpu-engine:openvino-int8")),
    "openvino-bf16": Backend(_openvino_reason, _build_openvino, ("onnx", "cpu-engine:openvino-bf16")),
    "onnxruntime-int8": Backend(lambda: _ort_reason("CPUExecutionProvider"), _build_ort_int8,
                                ("onnx", "cpu-engine:onnxruntime-int8")),
    "openvino-cpu": Backend(_openvino_reason, _build_openvino, ("onnx", "cpu-engine:openvino-cpu")),
}
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "torch-cuda-fp16", "onnxruntime-cpu", "torch-cpu")
# Backends that never use a GPU (for schedulers such as the Ray engine): the -cpu ones and the CPU engines.
CPU_ONLY = frozenset({"onnxruntime-cpu", "torch-cpu", "openvino", "openvino-int8", "openvino-bf16", "openvino-cpu",
                      "onnxruntime-int8"})
# Backends that always run on a GPU (a scheduler must give them one).
GPU_ONLY = frozenset({"tensorrt", "onnxruntime-cuda", "onnxruntime-tensorrt", "torch-cuda", "torch-cuda-fp16"})
BACKENDS = tuple(REGISTRY)
CHECKS = {name: backend.check for name, backend in REGISTRY.items()}  # tests fake availability here


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

    from mmdeploy.environment import CPU_FEATURES, cpu_info

    versions = {m: _version(m) for m in ("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "av", "bentoml")}
    versions["python"] = platform.python_version()
    gpu = {"cuda": torch.cuda.is_available(), "name": torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else None, "torch_cuda_build": torch.version.cuda}
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    reasons = backend_reasons()
    cpu = cpu_info()
    cpu["features"] = {f: CPU_FEATURES[f] for f in cpu["features"]}
    return {"versions": versions, "gpu": gpu, "cpu": cpu, "onnxruntime_providers": providers,
            "auto_order": list(AUTO_ORDER),
            "backends": {k: {"usable": v is None, "reason": v} for k, v in reasons.items()}}
