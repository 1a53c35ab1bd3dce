"""Opening a file and choosing its streams, the clock (time 0 = the container's start) and the error boundary."""
from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

from mmdeploy.errors import MediaError
from mmdeploy.media.clip import AudioInfo, VideoInfo
from mmdeploy.media.rotation import stored_rotation

OPEN_TIMEOUT = (10.0, 10.0)  # seconds: av.open's (open, read) timeouts
SCAN_PACKETS = 200_000      # packets read to find the end of a file that states no duration
MAX_JUMP = 30.0             # s: a timestamp this far past the previous one is damage, not a gap


def boundary(fn):
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


class Source:
    """`with Source(path) as src`: src.container, opened with clear MediaErrors for missing, empty or
    unreadable files; `rewind()` goes back to the start of the file (reopening: some demuxers cannot
    seek back to the first keyframe)."""

    def __init__(self, path: str | os.PathLike):
        self.path = path
        self.container = None
        self.fresh = True  # nothing read yet: positioned at the start

    def __enter__(self) -> "Source":
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
            raise MediaError(self.path, f"not a readable media file ({why(exc)})") from None

    def __exit__(self, *exc_info) -> None:
        if self.container is not None:
            self.container.close()


def why(exc: BaseException) -> str:
    import av

    if isinstance(exc, av.FFmpegError) and getattr(exc, "strerror", None):
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def pick(container, kind: str):
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


def stream_index(stream) -> int | None:
    return None if stream is None else stream.index


def audio_info(stream) -> AudioInfo | None:
    if stream is None:
        return None
    cc = stream.codec_context
    return AudioInfo(cc.name, int(cc.sample_rate), int(cc.channels), stream.index)


def video_info(path, container, stream) -> VideoInfo | None:
    if stream is None:
        return None
    cc = stream.codec_context
    fps = float(stream.average_rate or stream.guessed_rate or 0.0)
    return VideoInfo(cc.name, int(cc.width), int(cc.height), round(fps, 3),
                     stored_rotation(path, container, stream), stream.index)


def packets(container, streams):
    """container.demux(streams) without PyAV 18's end-of-file slip: where a stream appears after the header
    (FLV and the other formats whose streams are found while reading), its flush loop looks the new stream up in
    a stream list that never got it and raises IndexError, after the last packet and the flush packets of the
    streams asked for (their indices are lower). So the end is the end, whichever path reads the file."""
    try:
        yield from container.demux(streams)
    except IndexError:
        return


def time_zero(container) -> float:
    """Container start time in seconds: our time 0."""
    return container.start_time / 1e6 if container.start_time is not None else 0.0


def file_seconds(src: Source) -> float | None:
    """Seconds of media from time 0: the container's, else the streams', else by demuxing the tail."""
    container = src.container
    if container.duration:
        return container.duration / 1e6
    origin = time_zero(container)
    ends = [float((s.start_time or 0) + s.duration) * s.time_base - origin
            for s in container.streams if s.type in ("audio", "video") and s.duration]
    if ends:
        return max(ends)
    src.fresh = False
    return scan_end(container, origin)


def scan_end(container, origin: float) -> float | None:
    """End time from packet timestamps (no decoding): from a seek near the end, else from the start;
    at most `SCAN_PACKETS` packets."""
    import av

    streams = [s for s in container.streams if s.type in ("audio", "video")]
    for offset in (1 << 62, 0):
        end = None
        try:
            container.seek(offset, backward=True)
            for _, packet in zip(range(SCAN_PACKETS), packets(container, streams)):
                if packet.pts is not None and packet.time_base is not None:
                    t = float((packet.pts + (packet.duration or 0)) * packet.time_base) - origin
                    end = t if end is None else max(end, t)
        except (av.FFmpegError, OSError):
            pass  # not seekable, or a damaged tail: keep what was read
        if end is not None:
            return end
    return None
