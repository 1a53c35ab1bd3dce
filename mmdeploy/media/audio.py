"""Audio: mono float32 samples at the spec rate, placed by timestamp."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from mmdeploy.errors import MediaError
from mmdeploy.media.demux import decoded
from mmdeploy.media.source import MAX_JUMP, Source, time_zero, why

SYNC_TOLERANCE = 0.010      # s: audio timestamps closer than this to "contiguous" are treated as contiguous


def place(buf: np.ndarray, base: int, written: int | None, rate: int, t: float | None,
          samples: np.ndarray) -> tuple[np.ndarray, int]:
    """Write `samples` (starting at stream time t; None: right after the last) into `buf` (buf[0] is sample
    `base`; `written` is the index just after the last sample placed, None before any); return (the buffer,
    grown if needed, and the new `written`). The one rule for files, timelines and live streams: timestamps within
    SYNC_TOLERANCE of contiguous, or jumping more than MAX_JUMP, stay contiguous."""
    i = written if t is None and written is not None else int(round((t or 0.0) * rate))
    if written is not None and (abs(i - written) <= SYNC_TOLERANCE * rate or i - written > MAX_JUMP * rate):
        i = written  # timestamp jitter or a damaged timestamp: stay contiguous
    elif written is None and i - base > MAX_JUMP * rate:
        i = base
    if i < base:
        samples, i = samples[base - i:], base
    stop = i + len(samples)
    if stop - base > len(buf):
        grown = np.zeros(max(stop - base, 2 * len(buf)), np.float32)
        grown[:len(buf)] = buf
        buf = grown
    buf[i - base:stop - base] = samples
    return buf, stop if written is None else max(written, stop)


class AudioTrack:
    """Mono float32 samples at `rate`, placed by timestamp, kept only from the earliest needed time."""

    def __init__(self, src: Source, index: int, rate: int, t_first: float, reference: bool = False):
        self.rate = rate
        self.chunks = resampled(src, index, rate, t_first, reference)
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
        self.buf, self.written = place(self.buf, self.base, self.written, self.rate, t, samples)

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


def resampled(src: Source, index: int, rate: int, t_first: float, reference: bool = False) -> Iterator[tuple[float | None, np.ndarray]]:
    """(time, mono float32 samples at `rate`) chunks; any layout (5.1, 7.1, ...) is downmixed.

    Downmix = mean of the channels (what librosa.to_mono and torchaudio users do), after resampling
    each channel with swresample.
    """
    import av

    resampler, setup = None, None
    for _, frame in decoded(src, index, t_first, margin=0.2, reference=reference):
        origin = time_zero(src.container)
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != setup:
            if resampler is not None:
                yield from chunks(resampler.resample(None), origin)
            resampler, setup = av.AudioResampler(format="fltp", layout=None, rate=rate), key
        try:
            out = resampler.resample(frame)
        except (av.FFmpegError, ValueError) as exc:
            raise MediaError(src.path, f"cannot convert audio of stream {index} ({why(exc)})") from None
        yield from chunks(out, origin)
    if resampler is not None:
        yield from chunks(resampler.resample(None), origin)


def chunks(frames, origin: float = 0.0) -> Iterator[tuple[float | None, np.ndarray]]:
    for f in frames:
        planes = f.to_ndarray()  # [channels, samples] float32
        samples = planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32)
        yield (None if f.time is None else float(f.time) - origin), samples
