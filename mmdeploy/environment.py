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
