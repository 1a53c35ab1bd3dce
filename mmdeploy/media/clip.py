"""What a decoded file is: its tracks (MediaInfo), one window of it (Clip), and how to decode (DecodeOptions)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode, passed down from the settings (never read from the environment here).

    frame_threads: threads of a timeline's video decoder (N > 1: N frame threads; 1: one slice thread).
    reference: decode every packet of the streams read, as a plain full decode does: the baseline the fast
    path must equal bit for bit (tests/test_decode_exact.py) and the "before" of the benchmarks."""

    frame_threads: int = 1
    reference: bool = False


@dataclass(frozen=True)
class AudioInfo:
    codec: str
    sample_rate: int
    channels: int
    stream: int  # index in the container


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int   # as stored (before rotation), like ffprobe
    height: int
    fps: float   # average rate (0.0 when the container does not say)
    rotation: int  # degrees counter-clockwise that display applies (ffmpeg/PyAV convention), 0 if none
    stream: int


@dataclass(frozen=True)
class MediaInfo:
    path: str
    duration: float | None  # container duration in seconds; None when the file does not say
    audio: AudioInfo | None
    video: VideoInfo | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Clip:
    """One window of a file: audio [S] float32 mono at the spec rate, frames [N, H, W, 3] uint8 RGB."""

    path: str
    start: float
    seconds: float
    audio: np.ndarray | None = None
    frames: np.ndarray | None = None
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    @property
    def has_video(self) -> bool:
        return self.frames is not None
