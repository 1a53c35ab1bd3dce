"""The skip plan: which video packets the decoder may drop (skip_frame=NONREF) without changing a result."""
from __future__ import annotations

import bisect
import math
from typing import Any, Iterator

from mmdeploy.media.source import MAX_JUMP

LOOKAHEAD = 16              # video packets read ahead of the decoder, to know the next frame's time
SKIP_REACH = 1.0            # s: a frame is skipped only if a frame at most this much later is known


class SkipPlan:
    """Per-packet skip decisions for one video pass (see `decode_all`)."""

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
        """The packets unchanged, while remembering the times of up to LOOKAHEAD packets ahead."""
        ahead: list = []
        for packet in packets:
            self._remember(self._time(packet))
            ahead.append(packet)
            if len(ahead) > LOOKAHEAD:
                yield ahead.pop(0)
        yield from ahead

    def _remember(self, t: float | None) -> None:
        if t is None:
            return
        bisect.insort(self.known, t)
        self.order.append(t)
        if len(self.order) > 4 * LOOKAHEAD:
            old = self.order.pop(0)
            del self.known[bisect.bisect_left(self.known, old)]

    def before(self, packet, cc) -> None:
        """Set the decoder's skip_frame for this packet."""
        cc.skip_frame = "NONREF" if self._skippable(packet) else "DEFAULT"

    def _skippable(self, packet) -> bool:
        p = self._time(packet)
        if not self.ok or p is None or packet.size == 0 or self.last_shown is None:
            return False
        if not 0 < p - self.last_shown <= SKIP_REACH:  # frames so far came out in order, and not long ago
            return False
        i = bisect.bisect_right(self.known, p)
        if i == len(self.known):
            return False
        q = self.known[i]  # the earliest known frame after p: the next frame is at or before it
        eps = 1e-6
        return q - p <= SKIP_REACH and not self.wanted(p - eps, q + eps)

    def shown(self, t: float | None) -> None:
        """A frame came out of the decoder at time t."""
        if t is None or (self.last_shown is not None and (t <= self.last_shown or t - self.last_shown > MAX_JUMP)):
            self.ok = False
        if t is not None:
            self.last_shown = t if self.last_shown is None else max(self.last_shown, t)


def targets_in(targets: list[float]):
    """wanted(a, b): does a target lie in [a, b]?"""
    ts = sorted(targets)

    def wanted(a: float, b: float) -> bool:
        i = bisect.bisect_left(ts, a)
        return i < len(ts) and ts[i] <= b
    return wanted


def window_targets_in(targets, hop: float, window: float):
    """wanted(a, b) over the targets of every window k (targets(k): its frame times, all within
    [k * hop, k * hop + window])."""
    def wanted(a: float, b: float) -> bool:
        first = max(0, math.floor((a - window) / hop) - 1)
        last = max(first, math.ceil(b / hop) + 1)
        return any(a <= t <= b for k in range(first, last + 1) for t in targets(k))
    return wanted
