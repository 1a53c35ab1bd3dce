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


class ConfigError(MmdeployError):
    """A recipe, spec, target or manifest is malformed: unknown key, wrong type, missing file."""


class BundleError(MmdeployError):
    """A model bundle is missing, from another format version, or its tensors do not match."""


class BackendUnavailable(MmdeployError):
    """A requested runtime backend (TensorRT, ONNX Runtime, CUDA) cannot be used here."""
