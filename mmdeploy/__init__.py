"""mmdeploy: train balanced audio-video classifiers (MLB), export them, and classify video files."""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("mmdeploy-av")
except _metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0.2.0+source"
