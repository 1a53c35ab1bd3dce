"""Errors a user can cause and fix. The CLI prints each as one line and exits 2; HTTP returns 4xx."""
from __future__ import annotations


class MmdeployError(Exception):
    """Base class: the message names the file or key and says what to do."""


class MediaError(MmdeployError):
    """A file cannot be decoded (missing, empty, truncated, not media, no usable track)."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def reason(exc: BaseException) -> str:
    """A failed decode -> its one-line reason (a file's error text): a MediaError's reason, another
    MmdeployError's message, and for anything else (a bug, an unforeseen decoder failure) its type and first
    line, within 200 characters."""
    if isinstance(exc, MediaError):
        return exc.reason
    if isinstance(exc, MmdeployError):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"cannot decode ({type(exc).__name__}: {text[0][:200] if text else ''})"


class ConfigError(MmdeployError):
    """A recipe, spec, target or manifest is malformed: unknown key, wrong type, missing file."""


class BundleError(MmdeployError):
    """A model bundle is missing, from another format version, or its tensors do not match."""


class BackendUnavailable(MmdeployError):
    """A requested runtime backend (TensorRT, ONNX Runtime, CUDA) cannot be used here."""
