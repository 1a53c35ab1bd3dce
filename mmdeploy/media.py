"""PyAV: a media file -> Clip (mono float32 audio at the spec's rate, RGB uint8 frames at the spec's times).

Rules, in one place:
- Time 0 is the container's start time, so `start` means "seconds into the file" even when the streams
  start at 1.4 s (MPEG-TS) or 3 ms (WebM). Frame and sample times below are on that clock.
- Stream choice, per kind: ignore cover art (attached pictures) and undecodable streams; prefer the
  default disposition, then the most pixels (video) or the highest sample rate then channels (audio),
  then the lowest index. Data and subtitle streams are never read.
- A window [start, start + L) has L = min(spec.window_seconds, end - start, duration - start); this L is
  `Clip.seconds`. Audio is round(L * rate) mono samples (gaps and an early end of the track are zeros;
  None when the track has no sample in the window at all).
  Frame i is the frame on screen at start + offset_i * L / spec.window_seconds (offsets from
  `spec.frame_offsets()`), so a 2.2-s clip with a 3-s window still gets N distinct frames spread over
  its real content; a target before the first frame takes the first frame, after the last the last
  (for its duration, at least `_HOLD_LAST` s; later than that the window has no video: frames None).
- Rotation side data (display matrix) is applied to the frames, as ffmpeg's autorotate does.
- Timestamps that jump more than `_MAX_JUMP` s ahead are treated as damage (the stream stays
  contiguous), so a corrupt packet cannot make a window allocate or wait for minutes of media.
- Work is bounded: each pass seeks near the window, stops once past it, and gives up (MediaError)
  after `_PACKETS_PER_SECOND` packets per second of media advanced (plus a fixed allowance), so a
  hostile file whose timestamps never advance cannot hang a worker.
"""
from __future__ import annotations

import bisect
import contextlib
import functools
import gc
import inspect
import itertools
import math
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmdeploy.errors import MediaError
from mmdeploy.spec import ClipSpec

# Decoding can leave PyAV objects in reference cycles that own ffmpeg threads; a forked child (a
# DataLoader worker, a fork-based pool) that garbage-collects them waits forever for threads it does
# not have. So every fork of a process that imported this module first collects them in the parent.
os.register_at_fork(before=gc.collect)

OPEN_TIMEOUT = (10.0, 10.0)  # seconds: av.open's (open, read) timeouts
_PACKETS_PER_SECOND = 1000   # no real stream needs more packets per second of media
_PACKET_ALLOWANCE = 5000     # packets a pass may read before its time must advance
_SCAN_PACKETS = 200_000      # packets read to find the end of a file that states no duration
_MAX_BAD_PACKETS = 50        # corrupt packets skipped per pass before giving up
_HOLD_LAST = 1.0             # s: after a stream's last frame, that frame stays on screen this long
_MAX_JUMP = 30.0             # s: a timestamp this far past the previous one is damage, not a gap
_SYNC_TOLERANCE = 0.010      # s: audio timestamps closer than this to "contiguous" are treated as contiguous
_LOOKAHEAD = 16              # video packets read ahead of the decoder, to know the next frame's time
_SKIP_REACH = 1.0            # s: a frame is skipped only if a frame at most this much later is known
_REFERENCE_ENV = "MMDEPLOY_REFERENCE_DECODE"  # "1": decode every packet (see reference_decode)
_THREADS_ENV = "MMDEPLOY_DECODE_THREADS"      # threads of a timeline's video decoder (see _timeline_threads)


# ---- what a file holds ---------------------------------------------------------------------------
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


# ---- public functions ----------------------------------------------------------------------------
def _boundary(fn):
    """The one error boundary of this module: whatever a public function (or, for a generator, its
    iteration) raises from PyAV or on hostile bytes (IndexError from av/container/streams.py, ValueError,
    MemoryError, ...) leaves as MediaError naming the file. MediaError passes through unchanged."""
    def reason(exc: Exception) -> str:
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"cannot decode ({type(exc).__name__}{': ' + text if text else ''}); damaged or unsupported file"

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(path, *args, **kwargs):
            try:
                yield from fn(path, *args, **kwargs)
            except MediaError:
                raise
            except Exception as exc:  # noqa: BLE001 - see the docstring
                raise MediaError(path, reason(exc)) from exc
        return stream

    @functools.wraps(fn)
    def call(path, *args, **kwargs):
        try:
            return fn(path, *args, **kwargs)
        except MediaError:
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            raise MediaError(path, reason(exc)) from exc
    return call


@_boundary
def probe(path: str | os.PathLike) -> MediaInfo:
    """Tracks and duration from the container headers only (no frame is decoded)."""
    with _Source(path) as src:
        audio, video = _pick(src.container, "audio"), _pick(src.container, "video")
        if audio is None and video is None:
            raise MediaError(path, "no audio or video track that can be decoded")
        duration = src.container.duration / 1e6 if src.container.duration else None
        return MediaInfo(str(path), duration, _audio_info(audio), _video_info(path, src.container, video))


@_boundary
def decode_window(path: str | os.PathLike, spec: ClipSpec, start: float = 0.0, end: float | None = None,
                  audio_path: str | os.PathLike | None = None) -> Clip:
    """Decode [start, start + window) of `path` (shorter if `end` or the file ends first).

    `audio_path` (e.g. CREMA-D's separate WAV) replaces the file's own audio track.
    """
    start = float(start)
    if start < 0 or (end is not None and end <= start):
        raise MediaError(path, f"bad window start={start} end={end}: need 0 <= start < end")
    with _Source(path) as src:
        # stream indices, not objects: a pass may reopen the container (see _Source.rewind)
        video = _index(_pick(src.container, "video"))
        audio = None if audio_path is not None else _index(_pick(src.container, "audio"))
        if audio is None and video is None and audio_path is None:
            raise MediaError(path, "no audio or video track that can be decoded")
        duration = _duration(src)
        if duration is not None and start >= duration:
            raise MediaError(path, f"window start {start:g}s is at or past the end of the file ({duration:.2f}s)")
        seconds = _window_length(spec, start, end, duration)
        clip = Clip(str(path), start, seconds)
        # audio first: near time 0 it then reads the fresh file, as audio decoders (AAC, MP3) give their
        # exact first samples only from the start; video seeks to a keyframe, which is exact anywhere
        if audio is not None:
            clip.audio = _AudioTrack(src, audio, spec.sample_rate, start).window(start, seconds)
        if video is not None:
            targets = _frame_targets(spec, start, seconds)
            track = _FrameTrack(src, video, targets[0], wanted=_targets_in(targets))
            clip.frames, clip.frame_times = _stack(path, [track.at(t) for t in targets])
    if audio_path is not None:
        with _Source(audio_path) as src:
            audio = _index(_pick(src.container, "audio"))
            if audio is None:
                raise MediaError(audio_path, "no audio track that can be decoded")
            clip.audio = _AudioTrack(src, audio, spec.sample_rate, start).window(start, seconds)
    if clip.frames is None and clip.audio is None:
        raise MediaError(path, "no frame or sample could be decoded")
    return clip


@_boundary
def iter_windows(path: str | os.PathLike, spec: ClipSpec, window: float | None = None,
                 hop: float | None = None) -> Iterator[Clip]:
    """Consecutive windows over the whole file in one streaming pass per track (bounded memory).

    Windows start at 0, hop, 2*hop, ... A window shorter than `window` (the file's tail) is yielded only
    if it holds at least half a window or it is the file's only window. Each Clip follows
    `decode_window`'s rules with `spec.window_seconds` replaced by `window`.
    """
    window = float(window or spec.window_seconds)
    hop = float(hop or window)
    if window <= 0 or hop <= 0:
        raise MediaError(path, f"window ({window}) and hop ({hop}) must be > 0 seconds")
    spec = spec if window == spec.window_seconds else spec.replace(window_seconds=window)
    with _Source(path) as vsrc, _Source(path) as asrc:
        video, audio = _index(_pick(vsrc.container, "video")), _index(_pick(asrc.container, "audio"))
        if audio is None and video is None:
            raise MediaError(path, "no audio or video track that can be decoded")
        duration = _duration(vsrc)

        def targets(k: int) -> list[float]:
            return _frame_targets(spec, k * hop, _window_length(spec, k * hop, None, duration))

        frames = _FrameTrack(vsrc, video, 0.0, wanted=_window_targets_in(targets, hop, window),
                             threads=_timeline_threads()) if video is not None else None
        samples = _AudioTrack(asrc, audio, spec.sample_rate, 0.0) if audio is not None else None
        picked: dict[tuple[int, int], list | None] = {}  # (window, frame) -> chosen frame, picked in time order
        for k in itertools.count():
            start = k * hop
            if duration is None and _exhausted(frames, start) and _exhausted(samples, start) and k:
                return
            if duration is not None and (start >= duration or (k and duration - start < window / 2)):
                return
            seconds = _window_length(spec, start, None, duration)
            clip = Clip(str(path), start, seconds)
            if frames is not None:
                # later windows overlap this one: pick their earlier targets now, before the track moves on
                last = max(targets(k))
                later = range(k, int(last // hop) + 1)  # windows starting before this one's last target
                due = [(t, (j, i)) for j in later if duration is None or j * hop < duration
                       for i, t in enumerate(targets(j)) if t <= last and (j, i) not in picked]
                for t, key in sorted(due):
                    picked[key] = frames.at(t)
                clip.frames, clip.frame_times = _stack(path, [picked.pop((k, i)) for i in range(spec.frames)])
            if samples is not None:
                clip.audio = samples.window(start, seconds)
                samples.drop_before(start + hop)
            if clip.has_audio or clip.has_video:  # a window with nothing decodable (damaged part) is skipped
                yield clip


# ---- opening and choosing ------------------------------------------------------------------------
class _Source:
    """`with _Source(path) as src`: src.container, opened with clear MediaErrors for missing, empty or
    unreadable files; `rewind()` goes back to the start of the file (reopening: some demuxers cannot
    seek back to the first keyframe)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.container = None
        self.fresh = True  # nothing read yet: positioned at the start

    def __enter__(self) -> "_Source":
        self.container = self._open()
        return self

    def rewind(self) -> None:
        if not self.fresh:
            self.container.close()
            self.container, self.fresh = self._open(), True

    def _open(self):
        import av

        p = Path(self.path)
        if not p.exists():
            raise MediaError(self.path, "file not found")
        if not p.is_file():
            raise MediaError(self.path, "not a regular file")
        if p.stat().st_size == 0:
            raise MediaError(self.path, "file is empty (0 bytes)")
        try:
            return av.open(str(p), timeout=OPEN_TIMEOUT)
        except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
            raise MediaError(self.path, f"not a readable media file ({_why(exc)})") from None

    def __exit__(self, *exc_info) -> None:
        if self.container is not None:
            self.container.close()


def _why(exc: BaseException) -> str:
    import av

    if isinstance(exc, av.FFmpegError) and getattr(exc, "strerror", None):
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _pick(container, kind: str):
    """The stream of `kind` we read (see the module docstring), or None."""
    import av

    best, best_key = None, None
    for s in container.streams:
        if s.type != kind or s.codec_context is None:
            continue
        disposition = int(s.disposition)
        if disposition & int(av.stream.Disposition.attached_pic):
            continue
        cc = s.codec_context
        if kind == "video":
            if not (cc.width and cc.height):
                continue
            quality = (cc.width * cc.height, float(s.average_rate or 0))
        else:
            if not (cc.sample_rate and cc.channels):
                continue
            quality = (cc.sample_rate, cc.channels)
        key = (bool(disposition & int(av.stream.Disposition.default)), quality, -s.index)
        if best_key is None or key > best_key:
            best, best_key = s, key
    return best


def _index(stream) -> int | None:
    return None if stream is None else stream.index


def _audio_info(stream) -> AudioInfo | None:
    if stream is None:
        return None
    cc = stream.codec_context
    return AudioInfo(cc.name, int(cc.sample_rate), int(cc.channels), stream.index)


def _video_info(path, container, stream) -> VideoInfo | None:
    if stream is None:
        return None
    cc = stream.codec_context
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    return VideoInfo(cc.name, int(cc.width), int(cc.height), round(fps, 3),
                     _stored_rotation(path, container, stream), stream.index)


def _origin(container) -> float:
    """Container start time in seconds: our time 0."""
    return container.start_time / 1e6 if container.start_time is not None else 0.0


def _duration(src: _Source) -> float | None:
    """Seconds of media from time 0: the container's, else the streams', else by demuxing the tail."""
    container = src.container
    if container.duration:
        return container.duration / 1e6
    origin = _origin(container)
    ends = [float((s.start_time or 0) + s.duration) * s.time_base - origin
            for s in container.streams if s.type in ("audio", "video") and s.duration]
    if ends:
        return max(ends)
    src.fresh = False
    return _scan_end(container, origin)


def _scan_end(container, origin: float) -> float | None:
    """End time from packet timestamps (no decoding): from a seek near the end, else from the start;
    at most `_SCAN_PACKETS` packets."""
    import av

    streams = [s for s in container.streams if s.type in ("audio", "video")]
    for offset in (1 << 62, 0):
        end = None
        try:
            container.seek(offset, backward=True)
            for _, packet in zip(range(_SCAN_PACKETS), container.demux(streams)):
                if packet.pts is not None and packet.time_base is not None:
                    t = float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin
                    end = t if end is None else max(end, t)
        except (av.FFmpegError, OSError):
            pass  # not seekable, or a damaged tail: keep what was read
        if end is not None:
            return end
    return None


def _window_length(spec: ClipSpec, start: float, end: float | None, duration: float | None) -> float:
    seconds = spec.window_seconds
    if end is not None:
        seconds = min(seconds, end - start)
    if duration is not None:
        seconds = min(seconds, duration - start)
    return seconds


def _frame_targets(spec: ClipSpec, start: float, seconds: float) -> list[float]:
    scale = seconds / spec.window_seconds
    return [start + offset * scale for offset in spec.frame_offsets()]


def _exhausted(track, t: float) -> bool:
    return track is None or track.finished_before(t)


# ---- demuxing with bounded work ------------------------------------------------------------------
def _decoded(src: _Source, index: int, t_from: float, margin: float, wanted=None,
             threads: int = 0) -> Iterator[tuple[float | None, Any]]:
    """Yield (time, frame) of stream `index` starting at or before `t_from` (seeking there first).
    `wanted` (video): see `_decode_all`. `threads` > 1: decode with that many frame threads (same
    output, frames come out a few packets later); 0: PyAV's default (slice threads).

    If a seek lands after `t_from` (inexact index), try earlier, then the start of the stream, then
    reopening the file (MPEG-TS cannot always seek back to its first keyframe).
    """
    for attempt in [t for t in (t_from - margin, t_from - 5.0) if t > 0] + ["start", "reopen"]:
        if attempt == "reopen":
            src.rewind()
        if not _reference():  # before seeking, so that a seek reads no other stream either
            _only(src.container, src.container.streams[index])
            _set_threads(src.container.streams[index].codec_context, threads)
        if attempt == "start":
            if not src.fresh and not _seek(src, index, None):
                continue
        elif attempt != "reopen" and not _seek(src, index, attempt):
            continue
        final = attempt == "reopen" or (attempt == "start" and src.fresh)  # nothing earlier to try
        src.fresh = False
        stream, origin = src.container.streams[index], _origin(src.container)
        first_time = _stream_start(stream, origin) if attempt == "start" else None
        frames = _decode_all(src.path, src.container, stream, origin, wanted)
        first = next(frames, None)
        if first is None:
            if final:
                return
            continue
        limit = max(t_from, first_time or 0.0) + 1e-3
        if final or (first[0] is not None and first[0] <= limit):  # no timestamps: only the start is known
            yield first
            yield from frames
            return


def _stream_start(stream, origin: float) -> float | None:
    return None if stream.start_time is None else float(stream.start_time * stream.time_base) - origin


def _seek(src: _Source, index: int, t: float | None) -> bool:
    """Seek stream `index` to the keyframe at or before time t (None: its first packet); False if the
    demuxer cannot."""
    import av

    stream = src.container.streams[index]
    if t is None:
        offset = stream.start_time or 0
    else:
        offset = int(math.floor((_origin(src.container) + t) / stream.time_base))
    try:
        src.container.seek(int(offset), backward=True, stream=stream)
        return True
    except (av.FFmpegError, OSError, OverflowError):
        return False


def _decode_all(path, container, stream, origin: float, wanted=None) -> Iterator[tuple[float | None, Any]]:
    """Decode from the current position; stop work that does not move forward in time.

    Only work that cannot change a result is skipped (`reference_decode` turns all of it off):
    - the demuxer drops the packets of every other stream (`_only`, set by `_decoded`);
    - with `wanted(a, b)` (video: "is a frame target time in [a, b]?"), a packet whose frame cannot be
      the one on screen at any target is sent with skip_frame=NONREF, so the decoder drops it if no
      other frame references it (B-frames). Frame p is on screen at t iff p <= t < the next frame's
      time, so it is not needed if some other frame q > p is known (read ahead, or already read) and
      no target lies in [p, q]. Kept conservative: never before the first frame came out, only while
      frames come out in rising time order with no jump (see `_MAX_JUMP`), and only when p and q are
      at most `_SKIP_REACH` after the last frame out and p, so that kept frames stay less than
      2 * `_SKIP_REACH` apart: `_FrameTrack` then sees the same times as in a full decode.
    """
    import av

    full = _reference()
    count, bad, decoded, earliest, latest = 0, 0, 0, None, None
    skip = None if full or wanted is None else _SkipPlan(stream, origin, wanted)
    cc = stream.codec_context
    try:
        packets = container.demux(stream)
        if skip is not None:
            cc.skip_frame = "DEFAULT"
            packets = skip.read_ahead(packets)
        for packet in packets:
            count += 1
            progress = 0.0 if earliest is None else latest - earliest
            if count > _PACKET_ALLOWANCE + _PACKETS_PER_SECOND * progress + 4 * decoded:
                raise MediaError(path, f"gave up after {count} packets of stream {stream.index} without "
                                       "reaching the window (timestamps do not advance; damaged file?)")
            if skip is not None:
                skip.before(packet, cc)
            try:
                frames = packet.decode()
            except (av.FFmpegError, ValueError) as exc:  # a corrupt packet: skip it
                bad += 1
                if bad > _MAX_BAD_PACKETS:
                    raise MediaError(path, f"too many corrupt packets in stream {stream.index} ({_why(exc)})") from None
                continue
            decoded += len(frames)
            for frame in frames:
                t = None if frame.time is None else float(frame.time) - origin
                if skip is not None:
                    skip.shown(t)
                if t is not None:
                    earliest = t if earliest is None else min(earliest, t)
                    latest = t if latest is None else max(latest, t)
                yield t, frame
    except av.FFmpegError as exc:
        raise MediaError(path, f"decoding stream {stream.index} failed ({_why(exc)})") from None
    except MemoryError:
        raise MediaError(path, f"decoding stream {stream.index} ran out of memory") from None
    finally:
        if skip is not None:
            cc.skip_frame = "DEFAULT"


def _set_threads(cc, threads: int) -> None:
    if threads and not cc.is_open:
        cc.thread_type, cc.thread_count = ("FRAME", threads) if threads > 1 else ("SLICE", 1)


def _timeline_threads() -> int:
    """Threads of a timeline's video decoder: MMDEPLOY_DECODE_THREADS (N > 1: N frame threads), else 1,
    the core that classify.inference_threads() leaves to decoding (inference takes the rest). Measured
    (benchmarks/classify.py, 2 cores): frame threads = cores were no faster than 1 thread (0.94x-1.06x),
    and a timeline often runs beside other decoders (folders, the service), where they would only
    oversubscribe the cores."""
    value = os.environ.get(_THREADS_ENV, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


def _reference() -> bool:
    return os.environ.get(_REFERENCE_ENV) == "1"


@contextlib.contextmanager
def reference_decode() -> Iterator[None]:
    """Within this block (this process and the processes it starts), decode every packet of the streams
    read, as a plain full decode does: the baseline the fast path must equal bit for bit
    (tests/test_decode_exact.py) and the "before" of the benchmarks."""
    before = os.environ.get(_REFERENCE_ENV)
    os.environ[_REFERENCE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_REFERENCE_ENV, None)
        else:
            os.environ[_REFERENCE_ENV] = before


def _only(container, stream) -> None:
    """Let the demuxer drop every other stream's packets (it then need not read them)."""
    import av

    for s in container.streams:
        s.discard = av.stream.Discard.default if s.index == stream.index else av.stream.Discard.all


class _SkipPlan:
    """Per-packet skip decisions for one video pass (see `_decode_all`)."""

    def __init__(self, stream, origin: float, wanted):
        tb = stream.time_base
        self.num, self.den = (tb.numerator, tb.denominator) if tb else (0, 1)
        self.origin, self.wanted = origin, wanted
        self.known: list[float] = []      # sorted times of the packets read lately (and ahead)
        self.order: list[float] = []      # the same times in reading order (to forget the oldest)
        self.last_shown: float | None = None
        self.ok = self.num > 0            # turned off for good on any sign of disorder

    def _time(self, packet) -> float | None:
        if packet.pts is None:
            return None
        return float(packet.pts) * self.num / self.den - self.origin  # as PyAV's frame.time

    def read_ahead(self, packets) -> Iterator[Any]:
        """The packets unchanged, while remembering the times of up to _LOOKAHEAD packets ahead."""
        ahead: list = []
        for packet in packets:
            self._remember(self._time(packet))
            ahead.append(packet)
            if len(ahead) > _LOOKAHEAD:
                yield ahead.pop(0)
        yield from ahead

    def _remember(self, t: float | None) -> None:
        if t is None:
            return
        bisect.insort(self.known, t)
        self.order.append(t)
        if len(self.order) > 4 * _LOOKAHEAD:
            old = self.order.pop(0)
            del self.known[bisect.bisect_left(self.known, old)]

    def before(self, packet, cc) -> None:
        """Set the decoder's skip_frame for this packet."""
        cc.skip_frame = "NONREF" if self._skippable(packet) else "DEFAULT"

    def _skippable(self, packet) -> bool:
        p = self._time(packet)
        if not self.ok or p is None or packet.size == 0 or self.last_shown is None:
            return False
        if not 0 < p - self.last_shown <= _SKIP_REACH:  # frames so far came out in order, and not long ago
            return False
        i = bisect.bisect_right(self.known, p)
        if i == len(self.known):
            return False
        q = self.known[i]  # the earliest known frame after p: the next frame is at or before it
        eps = 1e-6
        return q - p <= _SKIP_REACH and not self.wanted(p - eps, q + eps)

    def shown(self, t: float | None) -> None:
        """A frame came out of the decoder at time t."""
        if t is None or (self.last_shown is not None and (t <= self.last_shown or t - self.last_shown > _MAX_JUMP)):
            self.ok = False
        if t is not None:
            self.last_shown = t if self.last_shown is None else max(self.last_shown, t)


def _targets_in(targets: list[float]):
    """wanted(a, b): does a target lie in [a, b]?"""
    ts = sorted(targets)

    def wanted(a: float, b: float) -> bool:
        i = bisect.bisect_left(ts, a)
        return i < len(ts) and ts[i] <= b
    return wanted


def _window_targets_in(targets, hop: float, window: float):
    """wanted(a, b) over the targets of every window k (targets(k): its frame times, all within
    [k * hop, k * hop + window])."""
    def wanted(a: float, b: float) -> bool:
        first = max(0, math.floor((a - window) / hop) - 1)
        last = max(first, math.ceil(b / hop) + 1)
        return any(a <= t <= b for k in range(first, last + 1) for t in targets(k))
    return wanted


# ---- video ---------------------------------------------------------------------------------------
class _FrameTrack:
    """Frames of one stream in time order; answers "which frame is on screen at t" for rising t."""

    def __init__(self, src: _Source, index: int, t_first: float, wanted=None, threads: int = 0):
        stream = src.container.streams[index]
        self.fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        self.frames = _decoded(src, index, t_first, margin=0.05, wanted=wanted, threads=threads)
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
            if t - self.last_time > _MAX_JUMP:  # a damaged timestamp: one frame period on
                t = self.last_time + 1 / self.fps
            t = max(t, self.last_time)  # keep display order monotonic
        self.last_time = t
        return [t, frame, None]

    def at(self, t: float) -> list | None:
        """The frame on screen at t (calls must not go back in time); None past a stream whose last
        frame ended (its duration, at least `_HOLD_LAST` s) before t, or with no frame at all."""
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
        """How long the last frame stays on screen: its own duration (a VFR still), at least _HOLD_LAST."""
        own = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        return max(_HOLD_LAST, 2.0 / self.fps, own)

    def finished_before(self, t: float) -> bool:
        self.at(t)
        return self.done and self.ahead is None and (self.shown is None or self.shown[0] < t)


def _stack(path, chosen: list[list | None]) -> tuple[np.ndarray | None, np.ndarray]:
    """(frames [N, H, W, 3] uint8, times [N]) of chosen frames; (None, []) if any is missing."""
    import av

    if not chosen or any(c is None for c in chosen):
        return None, np.zeros(0, np.float64)
    size = (chosen[0][1].width, chosen[0][1].height)
    for c in chosen:
        if c[2] is None:  # converted once, even when several targets share the frame
            try:
                c[2] = _rgb(c[1], None if (c[1].width, c[1].height) == size else size)
            except (av.FFmpegError, ValueError) as exc:
                raise MediaError(path, f"cannot convert a {c[1].format.name} frame to RGB ({_why(exc)})") from None
    return np.stack([c[2] for c in chosen]), np.array([c[0] for c in chosen], np.float64)


def _rgb(frame, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB uint8 [H, W, 3] of a decoded frame (any pixel format; scaled to `size` if the resolution
    changed mid-window), rotated for display."""
    kwargs = {"width": size[0], "height": size[1]} if size else {}
    return _orient(frame.to_ndarray(format="rgb24", **kwargs), _display_matrix(frame))


def _display_matrix(frame) -> tuple[int, ...] | None:
    import av

    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            data = bytes(side)
            if len(data) >= 36:
                return struct.unpack("<9i", data[:36])
    return None


def _matrix_rotation(m: tuple[int, ...]) -> int:
    """av_display_rotation_get rounded: degrees counter-clockwise, in (-180, 180]."""
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return 0
    deg = -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))
    deg = int(round(deg)) % 360
    return deg - 360 if deg > 180 else deg


def _orient(rgb: np.ndarray, m: tuple[int, ...] | None) -> np.ndarray:
    """Apply a display matrix like ffmpeg's autorotate (transpose / hflip / vflip)."""
    if m is None:
        return rgb
    theta = (-_matrix_rotation(m)) % 360  # clockwise degrees, as ffmpeg's get_rotation
    if abs(theta - 90) < 1:
        out = rgb.transpose(1, 0, 2) if m[3] > 0 else np.rot90(rgb, -1)  # cclock_flip : clock
    elif abs(theta - 180) < 1:
        out = rgb[:, ::-1] if m[0] < 0 else rgb
        out = out[::-1] if m[4] < 0 else out
    elif abs(theta - 270) < 1:
        out = np.rot90(rgb, -1)[::-1] if m[3] < 0 else np.rot90(rgb, 1)  # clock_flip : cclock
    else:
        out = rgb[::-1] if m[4] < 0 else rgb
    return np.ascontiguousarray(out)


def _stored_rotation(path, container, stream) -> int:
    """Rotation from the MP4/MOV track header (where display matrices live); 0 elsewhere."""
    if "mov" not in container.format.name and "mp4" not in container.format.name:
        return 0
    try:
        matrices = _mov_track_matrices(Path(path))
    except (OSError, struct.error, ValueError):
        return 0
    m = matrices.get(stream.id)
    return _matrix_rotation(m) if m else 0


def _mov_track_matrices(path: Path) -> dict[int, tuple[int, ...]]:
    """{track_ID: tkhd matrix as 9 ints} read from the moov box, skipping mdat without reading it."""
    out: dict[int, tuple[int, ...]] = {}
    with path.open("rb") as f:
        size = path.stat().st_size
        for kind, offset, length in _boxes(f, 0, size):
            if kind != b"moov":
                continue
            for tkind, toff, tlen in _boxes(f, offset, offset + length):
                if tkind != b"trak":
                    continue
                for hkind, hoff, hlen in _boxes(f, toff, toff + tlen):
                    if hkind == b"tkhd":
                        f.seek(hoff)
                        data = f.read(min(hlen, 104))
                        version = data[0]
                        ids = 12 if version == 0 else 20  # after version/flags + creation/modification
                        track_id = struct.unpack(">I", data[ids:ids + 4])[0]
                        matrix_at = ids + 4 + 4 + (4 if version == 0 else 8) + 8 + 2 + 2 + 2 + 2
                        out[track_id] = struct.unpack(">9i", data[matrix_at:matrix_at + 36])
            break
    return out


def _boxes(f, begin: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload offset, payload length) of the ISO-BMFF boxes in [begin, end)."""
    pos = begin
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1 and len(head) == 16:
            size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, min(size, end - pos) - header
        pos += size


# ---- audio ---------------------------------------------------------------------------------------
class _AudioTrack:
    """Mono float32 samples at `rate`, placed by timestamp, kept only from the earliest needed time."""

    def __init__(self, src: _Source, index: int, rate: int, t_first: float):
        self.rate = rate
        self.chunks = _resampled(src, index, rate, t_first)
        self.base = int(round(t_first * rate))  # sample index of buf[0]
        self.buf = np.zeros(0, np.float32)
        self.written: int | None = None  # sample index just after the last sample placed
        self.done = False

    def _fill(self, until: int) -> None:
        while not self.done and (self.written is None or self.written < until):
            item = next(self.chunks, None)
            if item is None:
                self.done = True
                return
            self._place(*item)

    def _place(self, t: float | None, samples: np.ndarray) -> None:
        i = self.written if t is None and self.written is not None else int(round((t or 0.0) * self.rate))
        if self.written is not None and (abs(i - self.written) <= _SYNC_TOLERANCE * self.rate
                                         or i - self.written > _MAX_JUMP * self.rate):
            i = self.written  # timestamp jitter or a damaged timestamp: stay contiguous
        elif self.written is None and i - self.base > _MAX_JUMP * self.rate:
            i = self.base
        if i < self.base:
            samples, i = samples[self.base - i:], self.base
        stop = i + len(samples)
        if stop - self.base > len(self.buf):
            grown = np.zeros(max(stop - self.base, 2 * len(self.buf)), np.float32)
            grown[:len(self.buf)] = self.buf
            self.buf = grown
        self.buf[i - self.base:stop - self.base] = samples
        self.written = stop if self.written is None else max(self.written, stop)

    def window(self, start: float, seconds: float) -> np.ndarray | None:
        a = int(round(start * self.rate))
        n = int(round(seconds * self.rate))
        self._fill(a + n)
        lo, hi = max(a, self.base), min(a + n, self.base + len(self.buf), self.written or self.base)
        if hi <= lo:
            return None  # the track has no sample in this window (it ended, or the data is missing)
        out = np.zeros(n, np.float32)
        out[lo - a:hi - a] = self.buf[lo - self.base:hi - self.base]
        return out

    def drop_before(self, t: float) -> None:
        cut = int(round(t * self.rate)) - self.base
        if cut > 0:
            self.buf = self.buf[cut:].copy() if cut < len(self.buf) else np.zeros(0, np.float32)
            self.base += cut

    def finished_before(self, t: float) -> bool:
        self._fill(int(round(t * self.rate)) + 1)
        return self.done and (self.written is None or self.written <= int(round(t * self.rate)))


def _resampled(src: _Source, index: int, rate: int, t_first: float) -> Iterator[tuple[float | None, np.ndarray]]:
    """(time, mono float32 samples at `rate`) chunks; any layout (5.1, 7.1, ...) is downmixed.

    Downmix = mean of the channels (what librosa.to_mono and torchaudio users do), after resampling
    each channel with swresample.
    """
    import av

    resampler, setup = None, None
    for _, frame in _decoded(src, index, t_first, margin=0.2):
        origin = _origin(src.container)
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != setup:
            if resampler is not None:
                yield from _chunks(resampler.resample(None), origin)
            resampler, setup = av.AudioResampler(format="fltp", layout=None, rate=rate), key
        try:
            out = resampler.resample(frame)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(src.path, f"cannot convert audio of stream {index} ({_why(exc)})") from None
        yield from _chunks(out, origin)
    if resampler is not None:
        yield from _chunks(resampler.resample(None), origin)


def _chunks(frames, origin: float = 0.0) -> Iterator[tuple[float | None, np.ndarray]]:
    for f in frames:
        planes = f.to_ndarray()  # [channels, samples] float32
        samples = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
        yield (None if f.time is None else float(f.time) - origin), samples
