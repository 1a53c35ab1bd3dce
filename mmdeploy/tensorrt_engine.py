"""ONNX -> serialized TensorRT engine, named by everything that makes an engine valid.

An engine only runs on the GPU model and TensorRT version that built it, so the file name carries
GPU + TensorRT version + precision + batch profile + ONNX hash; a mismatch gives another name, which
is rebuilt, never loaded. The timing cache (per GPU + TensorRT version) makes rebuilds fast.
Written against the TensorRT 10 Python API; `tensorrt` is imported only inside functions.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from mmdeploy.errors import BackendUnavailable
from mmdeploy.runtime.base import INPUTS
from mmdeploy.spec import ClipSpec

INSTALL_HINT = "pip install tensorrt --extra-index-url https://pypi.nvidia.com (needs an NVIDIA CUDA GPU)"


def tensorrt_reason() -> str | None:
    """None when TensorRT and a CUDA GPU are usable here, else why not and how to fix it."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return f"TensorRT is not installed; install it with `{INSTALL_HINT}`"
    import torch

    if not torch.cuda.is_available():
        return "TensorRT is installed but no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_name(gpu: str, trt_version: str, precision: str, profile: dict[str, int], onnx_sha: str) -> str:
    """e.g. `nvidia-h100-80gb-hbm3_trt10.13.0.35_fp16_b1-8-32_3f2a9c1d0b7e.engine`."""
    return (f"{slug(gpu)}_trt{trt_version}_{precision}_b{profile['min']}-{profile['opt']}-{profile['max']}"
            f"_{onnx_sha[:12]}.engine")


def timing_cache_name(gpu: str, trt_version: str) -> str:
    return f"{slug(gpu)}_trt{trt_version}.timing-cache"


def find_engine(export_dir: Path, gpu: str, trt_version: str, onnx_sha: str, precision: str | None = None) -> Path | None:
    """An engine in `export_dir` valid for this GPU, TensorRT and ONNX file (fp16 preferred), or None."""
    for p in (precision,) if precision else ("fp16", "fp32"):
        hits = sorted(Path(export_dir).glob(f"{slug(gpu)}_trt{trt_version}_{p}_b*_{onnx_sha[:12]}.engine"))
        if hits:
            return hits[0]
    return None


def profile_shapes(spec: ClipSpec, profile: dict[str, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) input shapes per input for the optimization profile."""
    per_item = {"audio": (1, *spec.spectrogram_shape), "video": tuple(spec.frames_shape)}
    return {name: tuple((profile[k], *per_item[name]) for k in ("min", "opt", "max")) for name in INPUTS}


def current_device() -> tuple[str, str]:
    """(GPU model name, TensorRT version) of this machine."""
    import tensorrt as trt
    import torch

    return torch.cuda.get_device_name(0), trt.__version__


def ensure_engine(onnx_path: Path, export_dir: Path, precision: str, profile: dict[str, int],
                  fp32_layers: tuple[str, ...] = ()) -> tuple[Path, bool]:
    """The engine for this GPU/TensorRT/precision/profile/ONNX, built if absent; (path, built)."""
    from mmdeploy.runtime.ort_backend import read_onnx_metadata

    gpu, version = current_device()
    path = Path(export_dir) / engine_name(gpu, version, precision, profile, file_sha256(onnx_path))
    if path.is_file():
        return path, False
    spec = read_onnx_metadata(onnx_path)[0]
    build_engine(onnx_path, path, precision, profile_shapes(spec, profile), fp32_layers,
                 Path(export_dir) / timing_cache_name(gpu, version))
    return path, True


def build_engine(onnx_path: Path, engine_path: Path, precision: str, shapes: dict[str, tuple],
                 fp32_layers: tuple[str, ...], timing_cache: Path) -> Path:
    """Parse the ONNX, add one optimization profile, FP16 if asked (pinning `fp32_layers` kinds to fp32),
    reuse and update the timing cache, write the serialized engine atomically."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailable(f"{onnx_path}: TensorRT cannot parse the ONNX file ({errors})")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        if fp32_layers:
            _pin_fp32(trt, network, fp32_layers)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, False)  # ignore_mismatch=False
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f"{onnx_path}: TensorRT engine build failed (see the TensorRT log above)")
    timing_cache.write_bytes(memoryview(cache.serialize()))
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(memoryview(serialized))
    tmp.replace(engine_path)
    return engine_path


def _pin_fp32(trt, network, kinds: tuple[str, ...]) -> None:
    """Run layers of the given kinds (softmax, normalization, reduce, pooling) and their outputs in fp32."""
    types = {"softmax": trt.LayerType.SOFTMAX, "normalization": trt.LayerType.NORMALIZATION,
             "reduce": trt.LayerType.REDUCE, "pooling": trt.LayerType.POOLING}
    wanted = {types[k] for k in kinds}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in wanted:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
