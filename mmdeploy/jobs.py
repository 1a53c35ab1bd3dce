"""What a decode worker runs (mmdeploy.isolate), or a caller runs itself on trusted data: a file -> feature items.

One item shape for a file's first window and for each window of a timeline:

    {file, audio [1,F,T] | None, video [3,N,H,W] | None, window{start, end}, timings_ms{decode, features}}

as float32 numpy (pickled through the worker's pipe), computed with the bundle's spec by
`mmdeploy.numpy_features` (torch-free: a decode worker never imports torch; held to `mmdeploy.features`, the
training reference, within numpy_features.TOLERANCE by tests/test_features.py). A bad file is {"file", "error": reason} (file_job) or MediaError (window_jobs, mid-stream
too); exceptions with custom constructors do not cross processes cleanly, so reasons travel as text.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmdeploy.errors import MediaError, MmdeployError, reason
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.spec import ClipSpec

FAST = DecodeOptions()


def clip_features(clip, spec: ClipSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Clip -> (audio [1,F,T] | None, video [3,N,H,W] | None) as float32 numpy (numpy_features, no torch)."""
    from mmdeploy.numpy_features import compute_features

    if not (clip.has_audio or clip.has_video):
        raise MediaError(clip.path, "no audio or video track")
    return compute_features(clip, spec)


def clip_window(clip) -> dict[str, float]:
    """{start, end}: the seconds of the file a clip covers."""
    return {"start": round(float(clip.start), 6), "end": round(float(clip.start) + float(clip.seconds), 6)}


def item(path: str, clip, spec: ClipSpec, decode_ms: float) -> dict[str, Any]:
    """A decoded clip -> the feature item (see the module docstring)."""
    t0 = time.perf_counter()
    audio, video = clip_features(clip, spec)
    return {"file": path, "audio": audio, "video": video, "window": clip_window(clip),
            "timings_ms": {"decode": decode_ms, "features": (time.perf_counter() - t0) * 1e3}}


def plan_job(path: str, spec: ClipSpec, window: float | None, hop: float | None, workers: int):
    """media.keyframes.plan_segments, run in a decode worker like any other work on an untrusted file."""
    from mmdeploy.media.keyframes import plan_segments

    return plan_segments(path, spec, window, hop, workers)


def error_result(path: str | Path, exc: Exception) -> dict[str, str]:
    """{"file", "error"}; the error text is the reason alone (the CLI prints `error: FILE: reason`)."""
    return {"file": str(path), "error": reason(exc)}


def file_job(path: str, spec: ClipSpec, options: DecodeOptions = FAST) -> dict[str, Any]:
    """One file's first spec window -> its feature item, or {"file", "error"}."""
    from mmdeploy import media

    try:
        t0 = time.perf_counter()
        clip = media.decode_window(path, spec, options=options)
        return item(path, clip, spec, (time.perf_counter() - t0) * 1e3)
    except MmdeployError as exc:
        return error_result(path, exc)


def window_jobs(path: str, spec: ClipSpec, window: float | None = None, hop: float | None = None,
                options: DecodeOptions = FAST, span: tuple[int, int] | None = None,
                tracks: tuple[str, ...] = ("audio", "video")) -> Iterator[dict[str, Any]]:
    """Consecutive windows of one file -> feature items, streamed (bounded memory). `span`, `tracks`: one
    segment's windows / only these tracks (media.iter_windows; mmdeploy/segments.py merges them)."""
    from mmdeploy import media

    clips = media.iter_windows(path, spec, window=window, hop=hop, options=options, span=span, tracks=tracks)
    while True:
        t0 = time.perf_counter()
        clip = next(clips, None)
        if clip is None:
            return
        yield item(path, clip, spec, (time.perf_counter() - t0) * 1e3)


def audio_span_job(path: str, spec, window: float, hop: float, options: DecodeOptions,
                   span: tuple[int, int]) -> Iterator[dict[str, Any] | None]:
    """Decode-process job: the audio of windows k0 <= k < k1 as jobs.window_jobs items, decoded from the file's
    start (media.iter_windows never seeks audio: decoders and the resampler carry state from the start). That is
    the cost of exactness: segment i decodes the audio of every window before its k1, so a file in n segments
    decodes its audio about (n + 1) / 2 times (its video, most of the work, once). Windows before k0 give None
    (no features), so each window still answers within the per-window time limit."""
    from mmdeploy import media

    k0, k1 = span
    clips = media.iter_windows(path, spec, window=window, hop=hop, options=options, tracks=("audio",))
    t0 = time.perf_counter()
    for clip in clips:
        k = round(clip.start / hop)
        if k >= k1:
            return
        yield item(path, clip, spec, (time.perf_counter() - t0) * 1e3) if k >= k0 else None
        t0 = time.perf_counter()
