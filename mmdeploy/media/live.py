"""A live source -> windows as they complete: open a URL, a capture device or a pipe with deadlines, demux
audio and video in ONE pass (a live input cannot be opened twice), decode as packets arrive and hand the
samples and frames to `livewindows.LiveWindows`.

    live_windows(name, source, spec, window, hop, options, open_s, read_s)
        -> ("note", text) | ("window", Clip, arrival, behind_s, busy_ms) ...

`arrival` is time.monotonic() when the packet that completed the window came out of the demuxer (the
clock every process of the machine shares): a result's latency is measured from it. `behind_s` says how
far decoding is behind the stream's own clock (the best arrival-minus-timestamp seen so far is "on time");
past `MAX_BEHIND_S` the source is given up (MediaError), so a machine too slow for a stream never falls
behind without bound. `busy_ms`: decoding work spent on the window (waiting for data excluded).

Video starts at the first keyframe (packets before it cannot be decoded and are skipped, counted, and a
note says where video starts). Every failure is a MediaError naming the source: the open deadline, no data
for `read_s` s (a stalled or stopped source), the source ending, timestamps that jump (a restarted
source), too many corrupt packets in a row.
"""
from __future__ import annotations

import ctypes
import os
import select
import time
from dataclasses import dataclass
from typing import Iterator

from mmdeploy.errors import MediaError
from mmdeploy.media.audio import chunks
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.media.demux import MAX_BAD_PACKETS, set_threads
from mmdeploy.media.livewindows import LiveWindows
from mmdeploy.media.source import MAX_JUMP, boundary, pick, time_zero, why
from mmdeploy.spec import ClipSpec

OPEN_S = 10.0          # s: the source must open (and say what it holds) within this
READ_S = 5.0           # s: no data for this long is a stalled source
MAX_BEHIND_S = 10.0    # s: decoding this far behind the stream's clock gives the source up
KEYFRAME_WAIT = 1000   # video packets waited for a keyframe before decoding whatever comes
BACKWARDS_S = 1.0      # s: a timestamp this far before the latest is a restarted source
TRIM_EVERY_S = 30.0    # s of stream between two `release_memory()` calls
ENDED = "the source ended (end of stream)"
PROBE = {"probesize": "500000", "analyzeduration": "1000000"}  # 1 s of stream to learn the tracks
SCHEME_OPTIONS = {  # FFmpeg protocol options per URL scheme (a --option of the caller wins)
    "udp": {"overrun_nonfatal": "1", "fifo_size": "100000", "buffer_size": str(4 << 20)},
    "rtp": {"overrun_nonfatal": "1", "fifo_size": "100000", "buffer_size": str(4 << 20)},
    "http": {"reconnect": "0"}, "https": {"reconnect": "0"},  # reconnecting is ours (with backoff, said)
}


@dataclass(frozen=True)
class LiveSource:
    """What FFmpeg opens: a URL, a capture device (`format` names its input device: alsa, v4l2, lavfi,
    x11grab, ...), or the path of a FIFO another process writes the stream into (`pipe`: stdin, a browser's
    upload). `name` is how messages call it; `options` are FFmpeg options (KEY, VALUE) pairs."""

    url: str
    name: str
    format: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    pipe: bool = False

    def scheme(self) -> str:
        return "pipe" if self.pipe else self.url.split(":", 1)[0].lower() if "://" in self.url else "device"


class PipeReader:
    """A FIFO's bytes for PyAV, each read waiting at most `wait_s` (the first ones: `open_s`); a wait that
    runs out ends the stream with `stalled` set."""

    def __init__(self, path: str, open_s: float, wait_s: float):
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.wait_s, self.open_s = wait_s, open_s
        self.opened = False
        self.stalled = False

    def read(self, n: int) -> bytes:
        limit = self.wait_s if self.opened else self.open_s
        deadline = time.monotonic() + limit
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                self.stalled = True
                return b""
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                continue

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_source(source: LiveSource, open_s: float, read_s: float):
    """(container, PipeReader | None): the source opened with the open and read deadlines; MediaError
    with the reason (refused, not found, no data within `open_s`, no such input format here)."""
    import av

    options = {**PROBE, **SCHEME_OPTIONS.get(source.scheme(), {}), **dict(source.options)}
    reader = None
    try:
        if source.format is not None and source.format not in av.formats_available:
            raise MediaError(source.name, f"this FFmpeg (PyAV {av.__version__}) has no input format "
                                          f"{source.format!r}; capture with the ffmpeg command and pipe it: "
                                          f"ffmpeg -f {source.format} -i DEVICE -f mpegts - | mmdeploy watch -")
        if source.pipe:
            reader = PipeReader(source.url, open_s, read_s)
            container = av.open(reader, format=source.format, options=options, timeout=(open_s, read_s))
            reader.opened = True
        else:
            container = av.open(source.url, format=source.format, options=options, timeout=(open_s, read_s))
    except MediaError:
        raise
    except av.ExitError:
        raise MediaError(source.name, f"no stream within {open_s:g} s (open timeout); is the source "
                                      "publishing, and is the address right?") from None
    except av.ProtocolNotFoundError:
        scheme = source.url.split(":", 1)[0]
        raise MediaError(source.name, f"this FFmpeg (PyAV {av.__version__}) has no {scheme}:// protocol; receive "
                                      f"it with the ffmpeg command and pipe it: ffmpeg -i '{source.url}' -c copy "
                                      "-f mpegts - | mmdeploy watch -") from None
    except (av.FFmpegError, OSError, ValueError) as exc:
        stalled = reader is not None and reader.stalled
        if reader is not None:
            reader.close()
        if stalled:
            raise MediaError(source.name, f"no stream within {open_s:g} s (open timeout)") from None
        raise MediaError(source.name, f"cannot open ({why(exc)})") from None
    return container, reader


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; a no-op elsewhere). A long stream frees frames
    and arrays of many sizes and glibc keeps that memory: untrimmed, a worker grew about 1 MB a minute before it
    levelled off; trimmed every `TRIM_EVERY_S` s of stream it stayed in a band (README, Live streams)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def describe_tracks(container, audio, video) -> str:
    parts = [container.format.name.split(",")[0]]
    if video is not None:
        cc = video.codec_context
        parts.append(f"video {cc.name} {cc.width}x{cc.height}")
    if audio is not None:
        cc = audio.codec_context
        parts.append(f"audio {cc.name} {cc.sample_rate} Hz")
    return ", ".join(parts)


@boundary
def live_windows(name: str, source: LiveSource, spec: ClipSpec, window: float, hop: float,
                 options: DecodeOptions = DecodeOptions(), open_s: float = OPEN_S,
                 read_s: float = READ_S) -> Iterator[tuple]:
    """See the module docstring; `name` is `source.name` (the error boundary names it)."""
    import av

    t0 = time.monotonic()
    container, reader = open_source(source, open_s, read_s)
    try:
        audio, video = pick(container, "audio"), pick(container, "video")
        if audio is None and video is None:
            raise MediaError(name, "no audio or video track that can be decoded")
        yield "note", f"opened in {time.monotonic() - t0:.1f} s: {describe_tracks(container, audio, video)}"
        for s in container.streams:
            s.discard = av.stream.Discard.default if s in (audio, video) else av.stream.Discard.all
        if video is not None:
            set_threads(video.codec_context, options.frame_threads)
        decoder = Decoder(name, container, audio, video, LiveWindows(name, spec, window, hop, audio is not None,
                                                                      video is not None))
        try:
            for packet in container.demux([s for s in (audio, video) if s is not None]):
                yield from decoder.packet(packet, time.monotonic())
        except av.ExitError:
            raise MediaError(name, f"no data for {read_s:g} s (the source stalled or stopped)") from None
        if reader is not None and reader.stalled:
            raise MediaError(name, f"no data for {read_s:g} s (the source stalled or stopped)")
        yield from decoder.end()
    finally:
        container.close()
        if reader is not None:
            reader.close()


def every_frame_a_keyframe(stream) -> bool:
    """Intra-only video (raw frames from a device or lavfi, MJPEG cameras): each packet decodes on its own,
    whether or not the demuxer flags it as a keyframe."""
    codec = stream.codec_context.codec
    return bool(getattr(codec, "intra_only", False)) or codec.name in ("wrapped_avframe", "rawvideo")


class Decoder:
    """Packets in arrival order -> samples and frames into the window assembler -> finished windows."""

    def __init__(self, name: str, container, audio, video, windows: LiveWindows):
        self.name, self.audio, self.video, self.windows = name, audio, video, windows
        self.origin = time_zero(container)
        self.rate = windows.rate
        self.fps = float(video.average_rate or video.guessed_rate or 25.0) if video is not None else 25.0
        self.resampler, self.setup = None, None
        self.started = video is None or every_frame_a_keyframe(video)  # else from its first keyframe on
        self.waited = 0               # video packets skipped before it
        self.bad = 0                  # corrupt packets in a row
        self.latest: float | None = None  # latest packet time (stream s)
        self.last_frame: float | None = None
        self.clock: float | None = None   # min(arrival - packet time): "on time"
        self.busy = 0.0
        self.trimmed = 0.0  # stream time of the last release_memory()
        self.notes: list[str] = []
        self.missing = {"audio": False, "video": False}  # in the last window emitted

    def packet(self, packet, arrival: float) -> Iterator[tuple]:
        t0 = time.perf_counter()
        behind = self._timing(packet, arrival)
        if packet.stream is self.video:
            self._video(packet)
        else:
            self._audio(packet)
        self.busy += time.perf_counter() - t0
        yield from self._emit(arrival, behind)

    def end(self) -> Iterator[tuple]:
        """The stream ended: flush the decoders and give the windows it reached."""
        if self.audio is not None and self.resampler is not None:
            self._place(self.resampler.resample(None))
        yield from self._emit(time.monotonic(), 0.0, final=True)
        raise MediaError(self.name, ENDED)

    # ---- timing -------------------------------------------------------------------------------------
    def _timing(self, packet, arrival: float) -> float:
        if packet.pts is None or packet.time_base is None:
            return 0.0 if self.clock is None else max(0.0, arrival - self.clock - (self.latest or 0.0))
        t = float(packet.pts * packet.time_base) - self.origin
        if self.latest is not None and (t < self.latest - BACKWARDS_S or t > self.latest + MAX_JUMP):
            raise MediaError(self.name, f"timestamps jumped from {self.latest:.2f} s to {t:.2f} s "
                                        "(the source restarted)")
        self.latest = t if self.latest is None else max(self.latest, t)
        self.clock = arrival - t if self.clock is None else min(self.clock, arrival - t)
        behind = arrival - t - self.clock
        if behind > MAX_BEHIND_S:
            raise MediaError(self.name, f"decoding fell {behind:.0f} s behind the stream (this machine is too "
                                        "slow for it, or it comes faster than real time)")
        return behind

    # ---- decoding -----------------------------------------------------------------------------------
    def _decode(self, packet) -> list:
        import av

        try:
            frames = packet.decode()
        except (av.FFmpegError, ValueError) as exc:  # a corrupt or lost packet (UDP): skip it, bounded
            self.bad += 1
            if self.bad > MAX_BAD_PACKETS:
                raise MediaError(self.name, f"{self.bad} corrupt packets in a row ({why(exc)})") from None
            return []
        self.bad = 0
        return frames

    def _video(self, packet) -> None:
        if not self.started:
            if not packet.is_keyframe and self.waited < KEYFRAME_WAIT:
                self.waited += packet.size > 0
                return
            self.started = True
            at = "" if packet.pts is None else f" at {float(packet.pts * packet.time_base) - self.origin:.2f} s"
            self.notes.append(f"video starts at the first keyframe{at}" +
                              (f" ({self.waited} packets before it skipped)" if self.waited else ""))
        for frame in self._decode(packet):
            t = None if frame.time is None else float(frame.time) - self.origin
            last = self.last_frame
            if t is None:  # no timestamp: one frame duration after the previous frame
                t = 0.0 if last is None else last + 1 / self.fps
            elif last is not None and t - last > MAX_JUMP:
                t = last + 1 / self.fps
            t = t if last is None else max(t, last)
            self.last_frame = t
            self.windows.frame(t, frame)

    def _audio(self, packet) -> None:
        import av

        for frame in self._decode(packet):
            key = (frame.format.name, frame.layout.name, frame.sample_rate)
            if key != self.setup:
                if self.resampler is not None:
                    self._place(self.resampler.resample(None))
                self.resampler = av.AudioResampler(format="fltp", layout=None, rate=self.rate)
                self.setup = key
            try:
                self._place(self.resampler.resample(frame))
            except (av.FFmpegError, ValueError) as exc:
                raise MediaError(self.name, f"cannot convert audio ({why(exc)})") from None

    def _place(self, frames) -> None:
        for t, samples in chunks(frames, self.origin):
            self.windows.audio(t, samples)

    # ---- output -------------------------------------------------------------------------------------
    def _emit(self, arrival: float, behind: float, final: bool = False) -> Iterator[tuple]:
        while self.notes:
            yield "note", self.notes.pop(0)
        for clip in self.windows.ready(final):
            if not (clip.has_audio or clip.has_video):
                continue
            for modality, has, present in (("video", self.video is not None, clip.has_video),
                                           ("audio", self.audio is not None, clip.has_audio)):
                if has and present == self.missing[modality]:  # it just went missing, or came back
                    self.missing[modality] = not present
                    other = "audio" if modality == "video" else "video"
                    why_not = "not started yet" if modality == "video" and not self.started else "stopped"
                    yield "note", (f"{modality} is back from the window at {clip.start:.2f} s" if present else
                                   f"no {modality} in the window from {clip.start:.2f} s on ({why_not}): "
                                   f"{other}-only windows until it arrives")
            yield "window", clip, arrival, behind, self.busy * 1e3
            self.busy = 0.0
            if clip.start - self.trimmed >= TRIM_EVERY_S:
                self.trimmed = clip.start
                release_memory()
