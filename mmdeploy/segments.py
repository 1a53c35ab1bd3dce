"""One long file's timeline decoded segment by segment on several isolated workers at once; windows come out in
order, each bit-identical to the sequential decode (pipeline.decode_windows without a plan).

The plan (media/keyframes.py, made in a worker) cuts the windows into ranges [k0, k1) that start after a
keyframe. Each range's video is one streaming job (jobs.window_jobs with `span`, video only) on its own worker;
the audio track is one sequential job beside them (decoders and resamplers carry state from the start), and the
two are merged here by window start: the items are exactly the sequential ones (timings summed).

At most `workers` segments decode at once and at most `workers + 1` are held ahead of the consumer, each in a
reader thread's buffer (the worker must not block on a full pipe while an earlier segment is still being read),
each buffer holding at most a regular segment's windows until its segment is the one consumed: memory is
bounded by a few segments of features, whatever the file's length or its keyframe spacing. A segment that fails (a bad
packet, a decoder crash, a timeout) raises its MediaError when the windows before it have been yielded, like the
sequential decode; `close()` (from any thread) kills every worker at once.
"""
from __future__ import annotations

import collections
import math
import threading
from typing import Any, Callable, Iterator

from mmdeploy import isolate
from mmdeploy.jobs import window_jobs
from mmdeploy.media.keyframes import SEGMENT_SECONDS, SegmentPlan

Stream = Callable[[tuple[int, int] | None, tuple[str, ...]], Iterator[dict[str, Any]]]


def isolated_stream(path, spec, window: float, hop: float, timeout: float | None, options) -> Stream:
    """(span, tracks) -> that part of the file as feature items, streamed from a decode worker."""
    def stream(span, tracks):
        return isolate.IsolatedWindows(path, window_jobs, (str(path), spec, window, hop, options, span, tracks),
                                       timeout)
    return stream


def local_stream(path, spec, window: float, hop: float, options) -> Stream:
    """The same, decoded in this process (tests, trusted data)."""
    return lambda span, tracks: window_jobs(str(path), spec, window, hop, options, span, tracks)


class _Reader:
    """A stream (made by `open()` in a thread: a worker checkout may fork) read to the end there, so its worker
    never waits on a full pipe; iterate to get its items in order (waiting for each), then its error, if it
    failed. `on_end` runs in the thread when it is done."""

    def __init__(self, open_stream: Callable[[], Iterator[dict[str, Any]]], on_end: Callable[[], None], limit: int):
        self.items: Iterator[dict[str, Any]] | None = None
        self.on_end, self.limit = on_end, limit
        self.buffer: collections.deque = collections.deque()
        self.done, self.error, self.stopped, self.head = False, None, False, False
        self.cond = threading.Condition()
        threading.Thread(target=self._run, args=(open_stream,), daemon=True, name="mmdeploy-segment").start()

    def _run(self, open_stream: Callable[[], Iterator[dict[str, Any]]]) -> None:
        try:
            items = open_stream()
            with self.cond:
                self.items = items
                stopped = self.stopped
            if stopped:
                self.close()
                return
            for item in items:
                with self.cond:
                    while len(self.buffer) >= self.limit and not self.head and not self.stopped:
                        self.cond.wait()  # held far enough ahead: the worker waits (on its pipe) too
                    if self.stopped:
                        break
                    self.buffer.append(item)
                    self.cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - raised by the consumer, in order
            self.error = exc
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()
            self.on_end()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            with self.cond:
                while not self.buffer and not self.done:
                    self.cond.wait()
                if self.buffer:
                    item = self.buffer.popleft()
                    self.cond.notify_all()
                elif self.error is not None:
                    raise self.error
                else:
                    return
            yield item

    def lead(self) -> None:
        """This segment is the one being consumed: it reads on without a limit."""
        with self.cond:
            self.head = True
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.stopped = True
            self.buffer.clear()
            items = self.items
        if isinstance(items, isolate.IsolatedWindows):
            items.close()  # kills the worker; the thread wakes with its MediaError and ends


def read_ahead(items: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """`items` read to the end in a thread (a `_Reader` that leads from the start: no limit, so its worker never
    waits on us), given in order, its error raised after them (the Ray segment tasks' audio pass)."""
    reader = _Reader(lambda: items, lambda: None, 0)
    reader.lead()
    return iter(reader)


def merged(audio: dict[str, Any], video: dict[str, Any]) -> dict[str, Any]:
    """One window from the audio pass and the video segment: the sequential item (timings summed)."""
    timings = {k: audio["timings_ms"][k] + video["timings_ms"][k] for k in ("decode", "features")}
    return {**video, "audio": audio["audio"], "timings_ms": timings}


def merge_windows(audio: Iterator[dict[str, Any]], video: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Audio-only and video-only items of the same windows, each in window order -> the sequential decode's items
    (`merged`; a window with only one of them passes as it is), in order."""
    pending = next(audio, None)
    for item in video:
        start = item["window"]["start"]
        while pending is not None and pending["window"]["start"] < start:
            yield pending  # a window with audio and no video
            pending = next(audio, None)
        if pending is not None and pending["window"]["start"] == start:
            item, pending = merged(pending, item), next(audio, None)
        yield item
    while pending is not None:
        yield pending
        pending = next(audio, None)


class SegmentedWindows:
    """Iterator over a file's window items decoded by segments (see the module docstring)."""

    def __init__(self, plan: SegmentPlan, stream: Stream, workers: int, hold: int | None = None):
        self.plan, self.stream, self.workers = plan, stream, max(1, workers)
        # windows a segment not yet being consumed may hold: what a segment of SEGMENT_SECONDS has (a longer
        # one, between sparse keyframes, then waits), so memory does not grow with the file or its GOPs
        self.hold = hold or (max(2, math.ceil(SEGMENT_SECONDS / plan.hop)) if plan.hop else 16)
        self._lock = threading.Lock()
        self._todo = collections.deque(plan.segments)
        self._ahead: collections.deque[_Reader] = collections.deque()  # started, not yet consumed, in order
        self._running = 0
        self._closed = False
        self._audio = stream(None, ("audio",)) if plan.has_audio else None
        with self._lock:
            self._fill()
        self._items = self._merge()

    def _fill(self) -> None:
        """Start segments while workers and the read-ahead bound allow (call with the lock held)."""
        while self._todo and not self._closed and self._running < self.workers \
                and len(self._ahead) < self.workers + 1:
            self._running += 1
            span = self._todo.popleft()
            self._ahead.append(_Reader(lambda span=span: self.stream(span, ("video",)), self._ended, self.hold))

    def _ended(self) -> None:
        with self._lock:
            self._running -= 1
            self._fill()

    def _merge(self) -> Iterator[dict[str, Any]]:
        audio = iter(self._audio) if self._audio is not None else iter(())
        return merge_windows(audio, self._videos())

    def _videos(self) -> Iterator[dict[str, Any]]:
        """The segments' video items, segment after segment, each read on as it becomes the one consumed."""
        while True:
            with self._lock:
                if not self._ahead:
                    return
                reader = self._ahead[0]
            reader.lead()
            yield from reader
            with self._lock:
                self._ahead.popleft()
                self._fill()

    def __iter__(self) -> "SegmentedWindows":
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._items)

    def close(self) -> None:
        """Stop every worker of this file at once (any thread, any number of times)."""
        with self._lock:
            self._closed = True
            readers, self._todo = list(self._ahead), collections.deque()
        for reader in readers:
            reader.close()
        if isinstance(self._audio, isolate.IsolatedWindows):
            self._audio.close()

    def __enter__(self) -> "SegmentedWindows":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
