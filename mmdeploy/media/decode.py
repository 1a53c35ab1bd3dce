"""The public decoding functions: a file -> MediaInfo, one window -> Clip, consecutive windows -> Clips
(the rules are in the package docstring, mmdeploy/media/__init__.py)."""
from __future__ import annotations

import itertools
import os
from typing import Iterator

from mmdeploy.errors import MediaError
from mmdeploy.media import source
from mmdeploy.media.audio import AudioTrack
from mmdeploy.media.clip import Clip, DecodeOptions, MediaInfo
from mmdeploy.media.skip import targets_in, window_targets_in
from mmdeploy.media.source import Source, audio_info, boundary, file_seconds, stream_index, video_info
from mmdeploy.media.video import FrameTrack, stack
from mmdeploy.spec import ClipSpec

FAST = DecodeOptions()


@boundary
def probe(path: str | os.PathLike) -> MediaInfo:
    """Tracks and duration from the container headers only (no frame is decoded)."""
    with Source(path) as src:
        audio, video = source.pick(src.container, "audio"), source.pick(src.container, "video")
        if audio is None and video is None:
            raise MediaError(path, "no audio or video track that can be decoded")
        duration = src.container.duration / 1e6 if src.container.duration else None
        return MediaInfo(str(path), duration, audio_info(audio), video_info(path, src.container, video))


@boundary
def decode_window(path: str | os.PathLike, spec: ClipSpec, start: float = 0.0, end: float | None = None,
                  audio_path: str | os.PathLike | None = None, options: DecodeOptions = FAST) -> Clip:
    """Decode [start, start + window) of `path` (shorter if `end` or the file ends first).

    `audio_path` (e.g. CREMA-D's separate WAV) replaces the file's own audio track.
    """
    start = float(start)
    if start < 0 or (end is not None and end <= start):
        raise MediaError(path, f"bad window start={start} end={end}: need 0 <= start < end")
    with Source(path) as src:
        # stream indices, not objects: a pass may reopen the container (see Source.rewind)
        video = stream_index(source.pick(src.container, "video"))
        audio = None if audio_path is not None else stream_index(source.pick(src.container, "audio"))
        if audio is None and video is None and audio_path is None:
            raise MediaError(path, "no audio or video track that can be decoded")
        duration = file_seconds(src)
        if duration is not None and start >= duration:
            raise MediaError(path, f"window start {start:g}s is at or past the end of the file ({duration:.2f}s)")
        seconds = window_length(spec, start, end, duration)
        clip = Clip(str(path), start, seconds)
        # audio first: near time 0 it then reads the fresh file, as audio decoders (AAC, MP3) give their
        # exact first samples only from the start; video seeks to a keyframe, which is exact anywhere
        if audio is not None:
            clip.audio = AudioTrack(src, audio, spec.sample_rate, start, options.reference).window(start, seconds)
        if video is not None:
            targets = frame_targets(spec, start, seconds)
            track = FrameTrack(src, video, targets[0], wanted=targets_in(targets), reference=options.reference)
            clip.frames, clip.frame_times = stack(path, [track.at(t) for t in targets])
    if audio_path is not None:
        with Source(audio_path) as src:
            audio = stream_index(source.pick(src.container, "audio"))
            if audio is None:
                raise MediaError(audio_path, "no audio track that can be decoded")
            clip.audio = AudioTrack(src, audio, spec.sample_rate, start, options.reference).window(start, seconds)
    if clip.frames is None and clip.audio is None:
        raise MediaError(path, "no frame or sample could be decoded")
    return clip


@boundary
def iter_windows(path: str | os.PathLike, spec: ClipSpec, window: float | None = None,
                 hop: float | None = None, options: DecodeOptions = FAST, span: tuple[int, int] | None = None,
                 tracks: tuple[str, ...] = ("audio", "video")) -> Iterator[Clip]:
    """Consecutive windows over the whole file in one streaming pass per track (bounded memory).

    Windows start at 0, hop, 2*hop, ... A window shorter than `window` (the file's tail) is yielded only
    if it holds at least half a window or it is the file's only window. Each Clip follows
    `decode_window`'s rules with `spec.window_seconds` replaced by `window`.

    `tracks`: the tracks to read (the other's Clip field stays None; a window with neither is skipped).
    `span` (k0, k1): only windows k0 <= k < k1, video only: the pass seeks to the keyframe before window
    k0's first frame target, and each window's frames are bit-identical to the full pass's (a segment of
    media/keyframes.py; audio decoders and the resampler need the stream from its start, so audio is never
    split).
    """
    window = float(window or spec.window_seconds)
    hop = float(hop or window)
    if window <= 0 or hop <= 0:
        raise MediaError(path, f"window ({window}) and hop ({hop}) must be > 0 seconds")
    spec = spec if window == spec.window_seconds else spec.replace(window_seconds=window)
    if span is not None and "audio" in tracks:
        raise ValueError("iter_windows: a span decodes video only (audio is decoded in one pass from the start)")
    first, stop = span or (0, None)
    with Source(path) as vsrc, Source(path) as asrc:
        video, audio = stream_index(source.pick(vsrc.container, "video")), stream_index(source.pick(asrc.container, "audio"))
        if audio is None and video is None:
            raise MediaError(path, "no audio or video track that can be decoded")
        video, audio = (video if "video" in tracks else None), (audio if "audio" in tracks else None)
        duration = file_seconds(vsrc)

        def targets(k: int) -> list[float]:
            return frame_targets(spec, k * hop, window_length(spec, k * hop, None, duration))

        frames = FrameTrack(vsrc, video, targets(first)[0] if first else 0.0,
                             wanted=window_targets_in(targets, hop, window), threads=options.frame_threads,
                             reference=options.reference, keyframe_first=bool(first)) if video is not None else None
        samples = AudioTrack(asrc, audio, spec.sample_rate, 0.0, options.reference) if audio is not None else None
        picked: dict[tuple[int, int], list | None] = {}  # (window, frame) -> chosen frame, picked in time order
        for k in itertools.count(first):
            if stop is not None and k >= stop:
                return
            start = k * hop
            if duration is None and exhausted(frames, start) and exhausted(samples, start) and k:
                return
            if duration is not None and (start >= duration or (k and duration - start < window / 2)):
                return
            seconds = window_length(spec, start, None, duration)
            clip = Clip(str(path), start, seconds)
            if frames is not None:
                # later windows overlap this one: pick their earlier targets now, before the track moves on
                last = max(targets(k))
                later = range(k, int(last // hop) + 1 if stop is None else min(int(last // hop) + 1, stop))  # windows
                # starting before this one's last target (inside the span)
                due = [(t, (j, i)) for j in later if duration is None or j * hop < duration
                       for i, t in enumerate(targets(j)) if t <= last and (j, i) not in picked]
                for t, key in sorted(due):
                    picked[key] = frames.at(t)
                clip.frames, clip.frame_times = stack(path, [picked.pop((k, i)) for i in range(spec.frames)])
            if samples is not None:
                clip.audio = samples.window(start, seconds)
                samples.drop_before(start + hop)
            if clip.has_audio or clip.has_video:  # a window with nothing decodable (damaged part) is skipped
                yield clip


def window_length(spec: ClipSpec, start: float, end: float | None, duration: float | None) -> float:
    seconds = spec.window_seconds
    if end is not None:
        seconds = min(seconds, end - start)
    if duration is not None:
        seconds = min(seconds, duration - start)
    return seconds


def frame_targets(spec: ClipSpec, start: float, seconds: float) -> list[float]:
    scale = seconds / spec.window_seconds
    return [start + offset * scale for offset in spec.frame_offsets()]


def exhausted(track, t: float) -> bool:
    return track is None or track.finished_before(t)
