"""Demuxing and decoding one stream with bounded work: seek near the window, stop work that does not move
forward in time, give the skip plan its say per packet."""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterator

from mmdeploy.errors import MediaError
from mmdeploy.media.skip import SkipPlan
from mmdeploy.media.source import Source, packets, time_zero, why

PACKETS_PER_SECOND = 1000   # no real stream needs more packets per second of media
PACKET_ALLOWANCE = 5000     # packets a pass may read before its time must advance
MAX_BAD_PACKETS = 50        # corrupt packets skipped per pass before giving up


def decoded(src: Source, index: int, t_from: float, margin: float, wanted=None,
            threads: int = 0, reference: bool = False, keyframe_first: bool = False) -> Iterator[tuple[float | None, Any]]:
    """Yield (time, frame) of stream `index` starting at or before `t_from` (seeking there first).
    `wanted` (video): see `decode_all`. `threads` > 1: decode with that many frame threads (same
    output, frames come out a few packets later); 0: PyAV's default (slice threads).
    `keyframe_first` (a timeline segment, media/keyframes.py): after a seek, frames before the first key
    frame are dropped, so that every frame yielded decodes as in a pass from the start (a demuxer such as
    MPEG-PS's seeks to a packet, not a keyframe; open-GOP B-frames lack their references).

    If a seek lands after `t_from` (inexact index), try earlier, then the start of the stream, then
    reopening the file (MPEG-TS cannot always seek back to its first keyframe).
    """
    for attempt in [t for t in (t_from - margin, t_from - 5.0) if t > 0] + ["start", "reopen"]:
        if attempt == "reopen":
            src.rewind()
        if not reference:  # before seeking, so that a seek reads no other stream either
            only(src.container, src.container.streams[index])
            set_threads(src.container.streams[index].codec_context, threads)
        if attempt == "start":
            if not src.fresh and not seek(src, index, None):
                continue
        elif attempt != "reopen" and not seek(src, index, attempt):
            continue
        final = attempt == "reopen" or (attempt == "start" and src.fresh)  # nothing earlier to try
        src.fresh = False
        stream, origin = src.container.streams[index], time_zero(src.container)
        first_time = stream_start(stream, origin) if attempt == "start" else None
        frames = decode_all(src.path, src.container, stream, origin, wanted, reference)
        if keyframe_first and attempt not in ("start", "reopen"):
            frames = itertools.dropwhile(lambda item: not item[1].key_frame, frames)
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


def stream_start(stream, origin: float) -> float | None:
    return None if stream.start_time is None else float(stream.start_time * stream.time_base) - origin


def seek(src: Source, index: int, t: float | None) -> bool:
    """Seek stream `index` to the keyframe at or before time t (None: its first packet); False if the
    demuxer cannot."""
    import av

    stream = src.container.streams[index]
    if t is None:
        offset = stream.start_time or 0
    else:
        offset = int(math.floor((time_zero(src.container) + t) / stream.time_base))
    try:
        src.container.seek(int(offset), backward=True, stream=stream)
        return True
    except (av.FFmpegError, OSError, OverflowError):
        return False


def decode_all(path, container, stream, origin: float, wanted=None, reference: bool = False) -> Iterator[tuple[float | None, Any]]:
    """Decode from the current position; stop work that does not move forward in time.

    Only work that cannot change a result is skipped (`DecodeOptions.reference` turns all of it off):
    - the demuxer drops the packets of every other stream (`only`, set by `decoded`);
    - with `wanted(a, b)` (video: "is a frame target time in [a, b]?"), a packet whose frame cannot be
      the one on screen at any target is sent with skip_frame=NONREF, so the decoder drops it if no
      other frame references it (B-frames). Frame p is on screen at t iff p <= t < the next frame's
      time, so it is not needed if some other frame q > p is known (read ahead, or already read) and
      no target lies in [p, q]. Kept conservative: never before the first frame came out, only while
      frames come out in rising time order with no jump (see `MAX_JUMP`), and only when p and q are
      at most `SKIP_REACH` after the last frame out and p, so that kept frames stay less than
      2 * `SKIP_REACH` apart: `FrameTrack` then sees the same times as in a full decode.
    """
    import av

    full = reference
    count, bad, decoded, earliest, latest = 0, 0, 0, None, None
    skip = None if full or wanted is None else SkipPlan(stream, origin, wanted)
    cc = stream.codec_context
    try:
        stream_packets = packets(container, [stream])
        if skip is not None:
            cc.skip_frame = "DEFAULT"
            stream_packets = skip.read_ahead(stream_packets)
        for packet in stream_packets:
            count += 1
            progress = 0.0 if earliest is None else latest - earliest
            if count > PACKET_ALLOWANCE + PACKETS_PER_SECOND * progress + 4 * decoded:
                raise MediaError(path, f"gave up after {count} packets of stream {stream.index} without "
                                       "reaching the window (timestamps do not advance; damaged file?)")
            if skip is not None:
                skip.before(packet, cc)
            try:
                frames = packet.decode()
            except (av.FFmpegError, ValueError) as exc:  # a corrupt packet: skip it
                bad += 1
                if bad > MAX_BAD_PACKETS:
                    raise MediaError(path, f"too many corrupt packets in stream {stream.index} ({why(exc)})") from None
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
        raise MediaError(path, f"decoding stream {stream.index} failed ({why(exc)})") from None
    except MemoryError:
        raise MediaError(path, f"decoding stream {stream.index} ran out of memory") from None
    finally:
        if skip is not None:
            cc.skip_frame = "DEFAULT"


def set_threads(cc, threads: int) -> None:
    if threads and not cc.is_open:
        cc.thread_type, cc.thread_count = ("FRAME", threads) if threads > 1 else ("SLICE", 1)


def only(container, stream) -> None:
    """Let the demuxer drop every other stream's packets (it then need not read them)."""
    import av

    for s in container.streams:
        s.discard = av.stream.Discard.default if s.index == stream.index else av.stream.Discard.all
