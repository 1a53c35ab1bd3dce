"""A live stream's decoded samples and frames -> consecutive windows (Clips), each as soon as it is complete.

The file rules of this package (mmdeploy/media/__init__.py) on a timeline that has no end: windows start at
0, hop, 2*hop, ... of stream time (0 = the container's start time, as for a file); a window is
[start, start + window). Audio: samples placed by timestamp with the same jitter and damage rules as a
file's `AudioTrack`; a window's audio is its round(window * rate) samples, zeros where none arrived, None
when none at all. Video: frame i is the frame on screen at its target time (`decode.frame_targets`), the
last frame with time <= target; a frame at most `LEAD` s after a target stands in for it when no earlier
frame exists (a file takes the first frame there too); earlier than that the target has no frame, and a
window with a target without a frame has no video (frames None): the missing-modality path.

A window is complete when each modality is: audio once samples up to its end have arrived, video once a
frame after its last target has. A modality that stops (a camera unplugged while the microphone goes on,
video that has not reached its first keyframe yet) holds the window back until the other modality is `LAG`
s past its end; then it is decided with what there is (video: the last frame, if at most `video.HOLD_LAST`
s old). So windows keep coming from either modality alone, and the output is the file's wherever both
arrive in time (tests/test_live.py holds a live stream to the file's windows).

Memory is bounded: samples before the next window's start and frames of targets already used are dropped.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mmdeploy.media.audio import place
from mmdeploy.media.clip import Clip
from mmdeploy.media.decode import frame_targets
from mmdeploy.media.video import HOLD_LAST, stack
from mmdeploy.spec import ClipSpec

LEAD = 0.5   # s: the first frame stands in for targets at most this much before it
LAG = 1.0    # s: a modality that has not completed a window when the other is this far past its end is decided


class LiveWindows:
    """Feed `audio(t, samples)` and `frame(t, frame)` in arrival order; `ready()` gives the windows completed
    so far, in order. `has_audio` / `has_video`: whether the stream has that track at all."""

    def __init__(self, path: str, spec: ClipSpec, window: float, hop: float, has_audio: bool, has_video: bool):
        self.path, self.window, self.hop = path, float(window), float(hop)
        self.spec = spec if self.window == spec.window_seconds else spec.replace(window_seconds=self.window)
        self.rate = self.spec.sample_rate
        self.has_audio, self.has_video = has_audio, has_video
        self.next = 0  # the next window to emit
        # audio: samples from sample index `base` on; `written` = just after the last sample placed
        self.base, self.buf, self.written = 0, np.zeros(0, np.float32), None
        # video: the last frame seen ([time, frame, rgb]: video.stack's shape), targets -> chosen frame
        self.shown: list | None = None
        self.picked: dict[tuple[int, int], list | None] = {}  # (window, frame index) -> frame, None: missing
        self.registered = -1  # windows whose targets are known: up to this one

    # ---- input ---------------------------------------------------------------------------------------
    def audio(self, t: float | None, samples: np.ndarray) -> None:
        """Mono float32 samples at the spec rate starting at stream time t (None: right after the last)."""
        self.buf, self.written = place(self.buf, self.base, self.written, self.rate, t, samples)

    def frame(self, t: float, frame: Any) -> None:
        """A decoded video frame on screen from stream time t (times rising; see FrameTrack's rules)."""
        item = [t, frame, None]
        self._register(math.floor(t / self.hop))
        for key in sorted(k for k, v in self.picked.items() if v is _PENDING):
            target = self._target(*key)
            if target >= t:
                continue
            if self.shown is not None:
                self.picked[key] = self.shown
            else:
                self.picked[key] = item if t - target <= LEAD else None
        self.shown = item

    # ---- output --------------------------------------------------------------------------------------
    def ready(self, final: bool = False) -> list[Clip]:
        """The windows completed so far (`final`: the stream ended; decide every window it reached)."""
        out = []
        while True:
            clip = self._complete(self.next, final)
            if clip is None:
                return out
            out.append(clip)
            self.next += 1
            self._forget()

    # ---- internals -----------------------------------------------------------------------------------
    def _targets(self, k: int) -> list[float]:
        return frame_targets(self.spec, k * self.hop, self.window)

    def _target(self, k: int, i: int) -> float:
        return self._targets(k)[i]

    def _register(self, upto: int) -> None:
        for k in range(max(self.registered + 1, self.next), upto + 1):
            for i in range(self.spec.frames):
                self.picked[(k, i)] = _PENDING
        self.registered = max(self.registered, upto)

    def _audio_reach(self) -> float | None:
        return None if self.written is None else self.written / self.rate

    def _video_reach(self) -> float | None:
        return None if self.shown is None else self.shown[0]

    def _complete(self, k: int, final: bool) -> Clip | None:
        start = k * self.hop
        end = start + self.window
        a, v = self._audio_reach(), self._video_reach()
        reach = max(x for x in (a, v, 0.0) if x is not None)
        if final and reach < end:
            return None
        last_sample = int(round(start * self.rate)) + int(round(self.window * self.rate))
        audio_done = not self.has_audio or (self.written is not None and self.written >= last_sample)
        video_done = not self.has_video or self._video_complete(k)
        audio_late = self.has_audio and not audio_done and (final or (v is not None and v > end + LAG))
        video_late = self.has_video and not video_done and (final or (a is not None and a > end + LAG))
        if not ((audio_done or audio_late) and (video_done or video_late)):
            return None
        clip = Clip(self.path, start, self.window)
        if self.has_audio:
            clip.audio = self._samples(start)
        if self.has_video:
            self._register(k)
            if video_late:
                self._decide(k)
            clip.frames, clip.frame_times = stack(self.path, [self.picked[(k, i)] for i in range(self.spec.frames)])
        return clip  # with neither audio nor video when both were decided empty: the caller skips it

    def _video_complete(self, k: int) -> bool:
        if self.shown is None:
            return False
        last = max(self._targets(k))
        self._register(k)
        return self.shown[0] > last and all(self.picked[(k, i)] is not _PENDING for i in range(self.spec.frames))

    def _decide(self, k: int) -> None:
        """The stopped video's targets of window k: the last frame if recent enough, else none."""
        for i in range(self.spec.frames):
            if self.picked[(k, i)] is _PENDING:
                target = self._target(k, i)
                shown = self.shown
                recent = shown is not None and shown[0] <= target and target - shown[0] <= HOLD_LAST
                self.picked[(k, i)] = shown if recent else None

    def _samples(self, start: float) -> np.ndarray | None:
        a = int(round(start * self.rate))
        n = int(round(self.window * self.rate))
        lo, hi = max(a, self.base), min(a + n, self.base + len(self.buf), self.written or self.base)
        if hi <= lo:
            return None
        out = np.zeros(n, np.float32)
        out[lo - a:hi - a] = self.buf[lo - self.base:hi - self.base]
        return out

    def _forget(self) -> None:
        """Drop what no later window needs: samples before its start, choices of emitted windows."""
        cut = int(round(self.next * self.hop * self.rate)) - self.base
        if cut > 0:
            self.buf = self.buf[cut:].copy() if cut < len(self.buf) else np.zeros(0, np.float32)
            self.base += cut
        for key in [key for key in self.picked if key[0] < self.next]:
            del self.picked[key]


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


_PENDING = _Pending()
