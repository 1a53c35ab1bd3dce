"""mmdeploy: train balanced audio-video classifiers (MLB), export them, and classify video files."""
from __future__ import annotations


def __getattr__(name: str) -> str:
    """`__version__`, looked up on first use: the package metadata scan costs tens of milliseconds, which
    every process (the CLI, each decode workers' forkserver) would otherwise pay at import."""
    if name != "__version__":
        raise AttributeError(f"module 'mmdeploy' has no attribute {name!r}")
    from importlib import metadata

    try:
        version = metadata.version("mmdeploy-av")
    except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
        version = "0.2.0+source"
    globals()["__version__"] = version
    return version
