"""A long file's timeline split at keyframes into segments that several workers decode at once.

`plan_segments(path, spec, window, hop, workers)` -> SegmentPlan: the timeline's windows (k = 0, 1, ...:
window k starts at k * hop, with iter_windows' rules for the tail) cut into consecutive ranges [k0, k1), one
per segment. A segment's video is decoded on its own (`iter_windows(..., span=(k0, k1), tracks=("video",))`):
it seeks to the keyframe before its first frame target, which decodes the same frames as a pass from the start
(frames from a keyframe on never depend on packets before it), so each window is bit-identical to the
sequential decode (tests/test_segments.py). The audio track is not split: AAC/MP3 decoders and the resampler
carry state from the start of the stream, so it is decoded in one sequential pass beside the segments (it is
a small part of the work).

Boundaries are found by seeking, not by reading an index: for each ideal boundary (every `SEGMENT_SECONDS`,
at least `workers` segments) a seek backward to it and the first video packet give the keyframe at or before
it; the segment then starts at the first window whose first frame target lies after that keyframe, so a
segment decodes at most about one hop of video it does not use (boundaries move back to keyframes; two that
land on the same keyframe are one). Seeking reads only the container index and a few packets (milliseconds);
it runs in a decode worker like any other work on the file.

The plan is sequential (one segment, with the reason) when splitting cannot pay or might not be exact: one
worker, no video track, a duration the file does not state, a container outside EXACT_SEEK_FORMATS, a file
shorter than two segments, a container that cannot seek, or no keyframe but the first before the last
boundary (keyframes sparser than the file is long).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from mmdeploy.media import source
from mmdeploy.media.decode import frame_targets, window_length
from mmdeploy.media.demux import only
from mmdeploy.media.source import Source, boundary, file_seconds, time_zero
from mmdeploy.spec import ClipSpec

SEGMENT_SECONDS = 30.0     # media seconds per segment: memory held ahead is (workers + 1) segments of windows
MIN_SEGMENT_SECONDS = 10.0  # a shorter file is decoded in one pass
MARGIN = 0.05              # s: decode_window / FrameTrack seek this much before the first target
# Containers whose index seeks to keyframes with the timestamps of a pass from the start (tested in
# tests/test_segments.py). MPEG-PS/TS seek to a byte position and their frame times after a seek can differ
# from the full pass's (MPEG-2 pictures without a PTS), so they, and formats not tested, are one pass.
EXACT_SEEK_FORMATS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"})


@dataclass(frozen=True)
class SegmentPlan:
    """windows: how many windows the timeline has (None: unknown, sequential); segments: [k0, k1) ranges
    in order covering 0..windows; keyframes: the keyframe time each segment's decode starts from; reason:
    why the plan is sequential (None when split)."""
    windows: int | None
    segments: tuple[tuple[int, int], ...] = ()
    keyframes: tuple[float, ...] = ()
    reason: str | None = None
    workers: int = 1
    has_audio: bool = True
    hop: float = 0.0

    @property
    def split(self) -> bool:
        return len(self.segments) > 1

    def summary(self) -> dict:
        """What a timeline result says about how it was decoded."""
        if self.split:
            return {"segments": len(self.segments), "workers": self.workers, "sequential": None}
        return {"segments": 1, "workers": 1, "sequential": self.reason}


def window_count(spec: ClipSpec, window: float, hop: float, duration: float) -> int:
    """Windows iter_windows yields at most for a file of `duration` s (0, hop, ...; a tail window needs half a
    window, or to be the only one)."""
    k = 0
    while k * hop < duration and (k == 0 or duration - k * hop >= window / 2):
        k += 1
    return k


def first_target(wspec: ClipSpec, k: int, hop: float, duration: float) -> float:
    """The earliest frame target of window k (its frames are taken at spec offsets over its length; `wspec`:
    the spec with the timeline's window length)."""
    return frame_targets(wspec, k * hop, window_length(wspec, k * hop, None, duration))[0]


def sequential(reason: str, windows: int | None = None, has_audio: bool = True) -> SegmentPlan:
    return SegmentPlan(windows, ((0, windows),) if windows else (), reason=reason, has_audio=has_audio)


@boundary
def plan_segments(path: str | os.PathLike, spec: ClipSpec, window: float | None = None, hop: float | None = None,
                  workers: int = 2, segment_seconds: float = SEGMENT_SECONDS) -> SegmentPlan:
    """The timeline of `path` cut at keyframes into segments (see the module docstring)."""
    window = float(window or spec.window_seconds)
    hop = float(hop or window)
    with Source(path) as src:
        video, audio = source.pick(src.container, "video"), source.pick(src.container, "audio")
        duration = file_seconds(src)
        windows = window_count(spec, window, hop, duration) if duration else None
        if workers < 2:
            return sequential("one decode worker", windows, audio is not None)
        if video is None:
            return sequential("no video track (audio is decoded in one pass)", windows, audio is not None)
        if not duration or not windows:
            return sequential("the file states no duration", windows, audio is not None)
        if src.container.format.name not in EXACT_SEEK_FORMATS:
            return sequential(f"container {src.container.format.name}: seeking there is not frame-exact (only "
                              "MP4/MOV and Matroska/WebM are split)", windows, audio is not None)
        per = max(segment_seconds, MIN_SEGMENT_SECONDS)
        count = max(workers, math.ceil(duration / per)) if duration >= 2 * MIN_SEGMENT_SECONDS else 1
        per = duration / count
        if count < 2 or per < MIN_SEGMENT_SECONDS:
            return sequential(f"too short to split ({duration:.0f} s; segments need {MIN_SEGMENT_SECONDS:g} s)",
                              windows, audio is not None)
        only(src.container, video)
        wspec = spec if window == spec.window_seconds else spec.replace(window_seconds=window)
        starts, keys = [0], [0.0]
        for j in range(1, count):
            kf = keyframe_before(src, video, j * per)
            if kf is None:
                return sequential("the container cannot seek to a keyframe", windows, audio is not None)
            if kf <= keys[-1]:
                continue  # the same keyframe as the previous boundary: keyframes sparser than segments
            k0 = next((k for k in range(starts[-1] + 1, windows)
                       if first_target(wspec, k, hop, duration) - MARGIN >= kf), None)
            if k0 is None:
                break
            starts.append(k0)
            keys.append(kf)
        if len(starts) < 2:
            return sequential(f"keyframes too sparse to split (no keyframe after 0 s before {(count - 1) * per:.0f} s "
                              f"of {duration:.0f} s)", windows, audio is not None)
        segments = tuple(zip(starts, starts[1:] + [windows]))
        return SegmentPlan(windows, segments, tuple(keys), workers=workers, has_audio=audio is not None, hop=hop)


def keyframe_before(src: Source, stream, t: float) -> float | None:
    """Time of the keyframe at or before `t` (the first keyframe packet after a backward seek there), or None
    when the container cannot seek or has no keyframe packet with a timestamp there."""
    import av

    try:
        src.container.seek(int(math.floor((time_zero(src.container) + t) / stream.time_base)), backward=True,
                           stream=stream)
    except (av.FFmpegError, OSError, OverflowError):
        return None
    src.fresh = False
    origin = time_zero(src.container)
    for i, packet in enumerate(source.packets(src.container, [stream])):
        if i > 1000:
            return None
        if packet.is_keyframe and packet.pts is not None and packet.time_base is not None:
            return float(packet.pts * packet.time_base) - origin
    return None
