"""TensorRT engine files as the runtime finds them: named by everything that makes an engine valid (GPU +
TensorRT version + precision + batch profile + ONNX hash), so a mismatch gives another name, which
`mmdeploy export` rebuilds (mmdeploy/tensorrt_engine.py), never loaded. `tensorrt` is imported only inside
functions."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

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


def current_device() -> tuple[str, str]:
    """(GPU model name, TensorRT version) of this machine."""
    import tensorrt as trt
    import torch

    return torch.cuda.get_device_name(0), trt.__version__
