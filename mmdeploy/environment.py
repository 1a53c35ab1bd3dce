"""Is this environment whole? Import every package and native extension mmdeploy uses and check each installed
version against what the installed mmdeploy-av asks for (its pyproject pins, e.g. torch==2.11.0 with
torchaudio==2.11.0). One line per problem, naming the package, its version and the fix.

Why: an upstream release once let a fresh install pair torchaudio 2.11.1 with torch 2.11.0; torchaudio's C
library then failed to load (`undefined symbol`) deep inside training and serving. `mmdeploy doctor` and
the test suite's first step call `problems()`, so such a break shows up as one line, at once.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Callable

DIST = "mmdeploy-av"
FIX = "reinstall from the lock: `make install` (or `uv sync --frozen --extra cpu`)"


def _torchaudio() -> None:
    import torchaudio.functional as AF  # `import torchaudio` loads libtorchaudio: a torch mismatch fails here

    AF.melscale_fbanks(9, 0.0, 8000.0, 4, 16000, norm=None, mel_scale="htk")  # the call features.py makes


def _av() -> None:
    import av

    for name in ("h264", "aac"):
        av.codec.Codec(name, "r")  # the decoders the synthetic data and most uploads need


def _onnxruntime() -> None:
    import onnxruntime

    onnxruntime.get_available_providers()


# module -> (distribution names that may provide it, extra check after import)
CHECKS: dict[str, tuple[tuple[str, ...], Callable[[], None] | None]] = {
    "torch": (("torch",), None),
    "torchaudio": (("torchaudio",), _torchaudio),
    "av": (("av",), _av),
    "numpy": (("numpy",), None),
    "onnx": (("onnx",), None),
    "onnxscript": (("onnxscript",), None),
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu"), _onnxruntime),
    "safetensors": (("safetensors",), None),
    "yaml": (("pyyaml",), None),
    "pydantic": (("pydantic",), None),
    "typer": (("typer",), None),
    "bentoml": (("bentoml",), None),
    "pyarrow": (("pyarrow",), None),
}


def _installed(dists: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def _wanted() -> dict[str, str]:
    """{distribution: specifier} from the installed mmdeploy-av's requirements (no extras' markers)."""
    from packaging.requirements import Requirement

    try:
        requires = metadata.requires(DIST) or []
    except metadata.PackageNotFoundError:  # a bare source tree: nothing to compare against
        return {}
    wanted = {}
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": "cpu"}):
            wanted[req.name.lower()] = str(req.specifier)
    return wanted


def check(module: str) -> str | None:
    """None if `module` imports, works and satisfies the pin; else one line: package, version, problem, fix."""
    from packaging.specifiers import SpecifierSet

    dists, extra = CHECKS[module]
    installed = _installed(dists)
    if len(installed) > 1:
        both = " and ".join(f"{d} {v}" for d, v in installed.items())
        return f"{module}: {both} are both installed and provide the same module; keep one (extras cpu or gpu)"
    dist, version = next(iter(installed.items()), (dists[0], None))
    spec = _wanted().get(dist)
    if version is None:
        return f"{dist}: not installed; {FIX}"
    if spec and version not in SpecifierSet(spec, prereleases=True):
        return f"{dist} {version}: mmdeploy needs {dist}{spec}; {FIX}"
    try:
        importlib.import_module(module)
        if extra is not None:
            extra()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        cause = " ".join(str(exc).split())[:240] or type(exc).__name__
        return f"{dist} {version}: does not load ({type(exc).__name__}: {cause}); {FIX}"
    return None


def problems(modules: tuple[str, ...] | None = None) -> list[str]:
    """One line per broken package, in CHECKS order; [] when the environment is whole."""
    return [line for m in (modules or tuple(CHECKS)) if (line := check(m)) is not None]


# ---- the CPU: what int8 / bf16 engines can use here -------------------------------------------------
# /proc/cpuinfo flag -> what it means for the CPU engines (OpenVINO, ONNX Runtime int8).
CPU_FEATURES = {
    "avx2": "AVX2 (int8 via VPMADDUBSW)",
    "avx512f": "AVX-512",
    "avx_vnni": "AVX-VNNI (int8 dot products, 256-bit)",
    "avx512_vnni": "AVX-512 VNNI (int8 dot products)",
    "avx512_bf16": "AVX-512 BF16 (bf16 dot products)",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX tiles",
    "amx_int8": "AMX int8 (matrix tiles)",
    "amx_bf16": "AMX bf16 (matrix tiles)",
}


def cpu_info(cpuinfo: str | None = None) -> dict[str, object]:
    """{"model": the CPU's model name, "features": the CPU_FEATURES flags it has, "key": model + features as
    one file-name-safe string}, read from /proc/cpuinfo (or the given text). Compiled CPU engines and the
    timings `mmdeploy export` records are valid for one key: another CPU model or feature set is another key."""
    import hashlib
    import platform
    import re

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() not in fields:
            fields[name.strip()] = value.strip()
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown-cpu"
    flags = set(fields.get("flags", "").split())
    features = [f for f in CPU_FEATURES if f in flags]
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:48] or "cpu"
    digest = hashlib.sha256(" ".join(features).encode()).hexdigest()[:8]
    return {"model": model, "features": features, "key": f"{slug}-{digest}"}
