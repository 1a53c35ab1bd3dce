"""Video: the frame on screen at each target time, as RGB uint8."""
from __future__ import annotations

import numpy as np

from mmdeploy.errors import MediaError
from mmdeploy.media.demux import decoded
from mmdeploy.media.rotation import display_matrix, orient
from mmdeploy.media.source import MAX_JUMP, Source, why

HOLD_LAST = 1.0             # s: after a stream's last frame, that frame stays on screen this long


class FrameTrack:
    """Frames of one stream in time order; answers "which frame is on screen at t" for rising t."""

    def __init__(self, src: Source, index: int, t_first: float, wanted=None, threads: int = 0,
                 reference: bool = False, keyframe_first: bool = False):
        stream = src.container.streams[index]
        self.fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        self.frames = decoded(src, index, t_first, margin=0.05, wanted=wanted, threads=threads,
                              reference=reference, keyframe_first=keyframe_first)
        self.shown: list | None = None  # [time, av frame, rgb or None]: last frame with time <= t
        self.ahead: list | None = None  # first frame with time > t
        self.done = False
        self.last_time: float | None = None

    def _next(self) -> list | None:
        item = next(self.frames, None)
        if item is None:
            self.done = True
            return None
        t, frame = item
        if t is None:  # no timestamp (raw streams): one frame duration after the previous frame
            step = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 1 / self.fps
            t = 0.0 if self.last_time is None else self.last_time + step
        if self.last_time is not None:
            if t - self.last_time > MAX_JUMP:  # a damaged timestamp: one frame period on
                t = self.last_time + 1 / self.fps
            t = max(t, self.last_time)  # keep display order monotonic
        self.last_time = t
        return [t, frame, None]

    def at(self, t: float) -> list | None:
        """The frame on screen at t (calls must not go back in time); None past a stream whose last
        frame ended (its duration, at least `HOLD_LAST` s) before t, or with no frame at all."""
        while True:
            if self.ahead is None and not self.done:
                self.ahead = self._next()
            if self.ahead is not None and self.ahead[0] <= t:
                self.shown, self.ahead = self.ahead, None
                continue
            if self.done and self.shown is not None and t - self.shown[0] > self._hold(self.shown[1]):
                return None
            return self.shown or self.ahead

    def _hold(self, frame) -> float:
        """How long the last frame stays on screen: its own duration (a VFR still), at least HOLD_LAST."""
        own = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        return max(HOLD_LAST, 2.0 / self.fps, own)

    def finished_before(self, t: float) -> bool:
        self.at(t)
        return self.done and self.ahead is None and (self.shown is None or self.shown[0] < t)


def stack(path, chosen: list[list | None]) -> tuple[np.ndarray | None, np.ndarray]:
    """(frames [N, H, W, 3] uint8, times [N]) of chosen frames; (None, []) if any is missing."""
    import av

    if not chosen or any(c is None for c in chosen):
        return None, np.zeros(0, np.float64)
    size = (chosen[0][1].width, chosen[0][1].height)
    for c in chosen:
        if c[2] is None:  # converted once, even when several targets share the frame
            try:
                c[2] = rgb(c[1], None if (c[1].width, c[1].height) == size else size)
            except (av.FFmpegError, ValueError) as exc:
                raise MediaError(path, f"cannot convert a {c[1].format.name} frame to RGB ({why(exc)})") from None
    return np.stack([c[2] for c in chosen]), np.array([c[0] for c in chosen], np.float64)


def rgb(frame, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a decoded frame (any pixel format; scaled to `size` if the resolution
    changed mid-window), rotated for display."""
    kwargs = {"width": size[0], "height": size[1]} if size else {}
    return orient(frame.to_ndarray(format="rgb24", **kwargs), display_matrix(frame))
