"""ONNX -> serialized TensorRT engine (what `mmdeploy export --trt` builds), named by everything that makes an
engine valid (mmdeploy/runtime/trt_files.py: the names the runtime looks for).

An engine only runs on the GPU model and TensorRT version that built it, so the file name carries
GPU + TensorRT version + precision + batch profile + ONNX hash; a mismatch gives another name, which
is rebuilt, never loaded. The timing cache (per GPU + TensorRT version) makes rebuilds fast.
Written against the TensorRT 10 Python API; `tensorrt` is imported only inside functions.
"""
from __future__ import annotations

from pathlib import Path

from mmdeploy.errors import BackendUnavailable
from mmdeploy.runtime.base import INPUTS
from mmdeploy.runtime.trt_files import current_device, engine_name, file_sha256, timing_cache_name
from mmdeploy.spec import ClipSpec


def profile_shapes(spec: ClipSpec, profile: dict[str, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) input shapes per input for the optimization profile."""
    per_item = {"audio": (1, *spec.spectrogram_shape), "video": tuple(spec.frames_shape)}
    return {name: tuple((profile[k], *per_item[name]) for k in ("min", "opt", "max")) for name in INPUTS}


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
