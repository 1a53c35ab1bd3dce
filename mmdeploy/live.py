"""Live sources -> one line per window as soon as it is classified, on the pipeline (`pipeline.decode_live`:
an isolated decode worker, the bundle's ClipSpec, the one features function; `pipeline.infer` +
`pipeline.describe`: the one result shape).

    session = LiveSession(source, predictor, window, hop, ...)
    for line in session.run(): ...        # window lines and event lines, as they happen
    session.summary()                     # {"summary": {windows, dropped, latency_ms{p50, p99, max}, ...}}
    session.stop(); session.join()        # from any thread: end it; then wait for its reader threads

Window line: {source, start, end (stream seconds), wall (ISO time of the result), latency_ms (from the
arrival of the window's last packet to its result), behind_ms (decoding behind the stream's clock), label,
score, probs, top_k, modalities, per_modality, backend, timings_ms, dropped (so far)}.
Event line: {"event": "note" | "dropped" | "lost" | "reconnect" | "ended", "message": ..., ...}.

Never falls behind without bound: a reader thread takes windows from the worker as they come (the decoder
never waits for the model) into a `Backlog`; when the model is free it classifies what waited at most
`max_wait_s` (default: one hop) in one batch; older windows, and any beyond the backlog's depth, are
dropped, counted and said. Memory is flat: a bounded backlog, a fixed latency histogram. A source that is
lost (stalled, ended, crashed, restarted) is reopened after 1, 2, 4, ... s (at most 30), `reconnects`
times in a row (a connection that gave windows starts the count again); a pipe (stdin, a browser) is not.
Stream time goes on across reconnects (a new connection starts at the next hop after the wall-clock time
since the session started).
"""
from __future__ import annotations

import collections
import datetime
import math
import os
import select
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

import numpy as np

from mmdeploy import pipeline
from mmdeploy.errors import MediaError
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.media.live import ENDED, OPEN_S, READ_S, LiveSource, release_memory
from mmdeploy.pipeline import BATCH

BACKOFF_S = (1.0, 30.0)  # first wait before reopening a lost source, and the longest
LATENCY_BINS_MS = 60_000  # the histogram holds 1-ms bins up to a minute (and one bin beyond)
TRIM_EVERY = 60  # windows between two release_memory() calls here


# ---- pure parts ---------------------------------------------------------------------------------------
class Backlog:
    """Windows waiting for the model, oldest first: at most `depth` (one more pushes the oldest out);
    `take(now)` gives those that waited at most `max_wait_s` (up to `batch`) and the older ones dropped."""

    def __init__(self, depth: int, max_wait_s: float, batch: int = BATCH):
        self.depth, self.max_wait_s, self.batch = depth, max_wait_s, batch
        self.items: collections.deque = collections.deque()

    def offer(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """Add a window; the windows pushed out (dropped)."""
        self.items.append(item)
        dropped = []
        while len(self.items) > self.depth:
            dropped.append(self.items.popleft())
        return dropped

    def take(self, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(to classify, dropped): stale windows dropped, then the oldest `batch` of the others."""
        dropped = []
        while self.items and now - self.items[0]["arrival"] > self.max_wait_s:
            dropped.append(self.items.popleft())
        ready = [self.items.popleft() for _ in range(min(self.batch, len(self.items)))]
        return ready, dropped

    def __len__(self) -> int:
        return len(self.items)


class Latencies:
    """Latencies in 1-ms bins (fixed memory, exact to the millisecond): count, percentiles, max."""

    def __init__(self, bins: int = LATENCY_BINS_MS):
        self.counts = np.zeros(bins + 1, np.int64)
        self.n, self.top = 0, 0.0

    def add(self, ms: float) -> None:
        self.counts[min(len(self.counts) - 1, max(0, int(round(ms))))] += 1
        self.n += 1
        self.top = max(self.top, ms)

    def percentile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = max(1, math.ceil(q / 100 * self.n))
        return float(np.searchsorted(np.cumsum(self.counts), rank))

    def summary(self) -> dict[str, float | None]:
        return {"p50": self.percentile(50), "p99": self.percentile(99),
                "max": round(self.top, 1) if self.n else None}


def backoff(attempt: int, first: float = BACKOFF_S[0], most: float = BACKOFF_S[1]) -> float:
    """Seconds to wait before reconnect `attempt` (1, 2, ...): 1, 2, 4, ... at most `most`."""
    return min(most, first * 2 ** (attempt - 1))


def wall_time(t: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds."""
    stamp = datetime.datetime.fromtimestamp(time.time() if t is None else t, datetime.timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def window_line(source: str, item: dict[str, Any], probs: dict[str, np.ndarray], predictor, top_k: int,
                offset: float, infer_ms: float, now: float, dropped: int) -> dict[str, Any]:
    """A classified live window -> its line (see the module docstring)."""
    described = pipeline.describe(probs, list(predictor.classes), top_k)
    t = item["timings_ms"]
    return {"source": source, "start": round(item["window"]["start"] + offset, 6),
            "end": round(item["window"]["end"] + offset, 6), "wall": wall_time(),
            "latency_ms": round((now - item["arrival"]) * 1e3, 1), "behind_ms": item.get("behind_ms", 0.0),
            **described, "backend": predictor.backend,
            "timings_ms": {"decode": round(t["decode"], 3), "features": round(t["features"], 3),
                           "infer": round(infer_ms, 3)}, "dropped": dropped}


def event(kind: str, message: str, **more: Any) -> dict[str, Any]:
    return {"event": kind, "message": message, **more}


# ---- a pipe another process writes --------------------------------------------------------------------
class PipeFeed:
    """A FIFO in a private temporary folder: a decode worker reads it (`source()`, LiveSource(pipe=True)),
    this process writes it. `write()` queues bytes and returns False once more than `max_queued` wait (the
    reader is not keeping up, or gone); a thread moves them into the FIFO without ever blocking on a reader
    that died; `close()` ends the stream (the reader sees its end) and removes the folder."""

    def __init__(self, name: str, format: str | None = None, max_queued: int = 16 << 20):
        self.name, self.format, self.max_queued = name, format, max_queued
        self.folder = tempfile.mkdtemp(prefix="mmdeploy-live-")
        self.path = os.path.join(self.folder, "stream")
        os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)  # Linux: never blocks, keeps the FIFO open
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.written = 0
        self.cond = threading.Condition()
        self.closing = False
        self.drain_s = 10.0
        self.thread = threading.Thread(target=self._pump, daemon=True, name="mmdeploy-pipe")
        self.thread.start()

    def source(self, options: tuple[tuple[str, str], ...] = ()) -> LiveSource:
        return LiveSource(self.path, self.name, self.format, options, pipe=True)

    def write(self, data: bytes) -> bool:
        with self.cond:
            if self.closing:
                return False
            if self.queued + len(data) > self.max_queued:
                return False
            self.queue.append(bytes(data))
            self.queued += len(data)
            self.cond.notify()
        return True

    def _pump(self) -> None:
        pending, give_up = b"", math.inf
        try:
            while True:
                with self.cond:
                    if not pending:
                        while not self.queue and not self.closing:
                            self.cond.wait()
                        if self.queue:
                            pending = self.queue.popleft()
                            self.queued -= len(pending)
                    if self.closing:
                        give_up = min(give_up, time.monotonic() + self.drain_s)
                        if time.monotonic() > give_up or (not pending and unread(self.fd) == 0):
                            return  # all read (or the reader is gone): now the end of the stream
                if not pending:
                    time.sleep(0.05)
                    continue
                try:
                    if select.select([], [self.fd], [], 0.2)[1]:
                        n = os.write(self.fd, pending)
                        pending = pending[n:]
                        self.written += n
                except BlockingIOError:
                    continue
        except OSError:
            return
        finally:
            os.close(self.fd)
            shutil.rmtree(self.folder, ignore_errors=True)

    def close(self, drain_s: float = 10.0) -> None:
        """End the stream once every byte written so far was read (at most `drain_s` more seconds)."""
        with self.cond:
            self.drain_s = drain_s
            self.closing = True
            self.cond.notify()


def unread(fd: int) -> int:
    """Bytes in a pipe that no reader has taken yet."""
    import array
    import fcntl
    import termios

    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


# ---- the session --------------------------------------------------------------------------------------
class LiveSession:
    """One live source classified window by window; see the module docstring. `run()` from one thread;
    `stop()` from any (it ends `run()` at its next line)."""

    def __init__(self, source: LiveSource, predictor, window: float | None = None, hop: float | None = None,
                 top_k: int = 5, open_s: float = OPEN_S, read_s: float = READ_S, reconnects: int = 5,
                 options: DecodeOptions = DecodeOptions(), max_wait_s: float | None = None,
                 batch: int = BATCH, duration_s: float | None = None,
                 decode: Callable[..., Iterator[dict[str, Any]]] | None = None):
        self.source, self.predictor, self.top_k = source, predictor, top_k
        self.window = float(window or predictor.spec.window_seconds)
        self.hop = float(hop or self.window)
        self.open_s, self.read_s, self.reconnects, self.options = open_s, read_s, reconnects, options
        self.duration_s = duration_s
        self.decode = decode or pipeline.decode_live
        self.backlog = Backlog(2 * batch, self.hop if max_wait_s is None else max_wait_s, batch)
        self.latency = Latencies()
        self.windows = self.dropped = self.reconnected = 0
        self.cond = threading.Condition()
        self.events: collections.deque = collections.deque()
        self.stream = None
        self.closed = threading.Event()
        self.started = time.monotonic()
        self.ended: str | None = None
        self.last_end = 0.0
        self.offsets: dict[int, float] = {0: 0.0}  # connection -> stream seconds before it
        self.readers: list[threading.Thread] = []  # reader threads not yet joined

    # ---- the reader thread: worker -> backlog ------------------------------------------------------
    def _read(self, stream, connection: int) -> None:
        reason = None
        try:
            for item in stream:
                with self.cond:
                    if "note" in item:
                        self.events.append(event("note", item["note"]))
                    else:
                        item["connection"] = connection
                        for lost in self.backlog.offer(item):
                            self._drop(lost, "the backlog was full")
                    self.cond.notify()
        except MediaError as exc:
            reason = exc.reason
        except Exception as exc:  # noqa: BLE001 - said as the reason the source was lost, never a traceback
            reason = f"{type(exc).__name__}: {exc}"
        with self.cond:
            self.events.append(("lost", connection, reason or "the source ended"))
            self.cond.notify()

    def _drop(self, item: dict[str, Any], why: str) -> None:
        self.dropped += 1
        offset = self.offsets.get(item.get("connection", 0), 0.0)
        start, end = round(item["window"]["start"] + offset, 6), round(item["window"]["end"] + offset, 6)
        self.events.append(event("dropped", f"window {start:.2f}-{end:.2f} s dropped: {why}", start=start,
                                 end=end, dropped=self.dropped))

    def _open(self, connection: int) -> None:
        self.stream = self.decode(self.source, self.predictor.spec, self.window, self.hop, self.open_s,
                                  self.read_s, self.options)
        reader = threading.Thread(target=self._read, args=(self.stream, connection), daemon=True,
                                  name="mmdeploy-live")
        reader.start()
        self.readers = [t for t in self.readers if t.is_alive()] + [reader]

    # ---- the caller's loop ------------------------------------------------------------------------
    def run(self) -> Iterator[dict[str, Any]]:
        self.connection, self.attempt, self.got_windows = 0, 0, False
        lost: str | None = None  # why the current connection ended; handled once its windows are out
        self._open(0)
        try:
            while not self.closed.is_set():
                with self.cond:
                    while not self.events and not len(self.backlog) and lost is None and not self.closed.is_set():
                        self.cond.wait(0.25)
                    ready, stale = self.backlog.take(time.monotonic())
                    for item in stale:
                        self._drop(item, f"it waited more than {self.backlog.max_wait_s:g} s for the model")
                    events = list(self.events)
                    self.events.clear()
                    waiting = len(self.backlog)
                for e in events:
                    if isinstance(e, tuple):  # ("lost", connection, reason): the reader thread ended
                        lost = e[2] if e[1] == self.connection else lost
                    else:
                        yield e
                if ready:
                    self.got_windows = True
                    yield from self._classify(ready)
                if self.duration_s is not None and self.last_end >= self.duration_s:
                    self.ended = f"reached --duration {self.duration_s:g} s"
                    return
                if lost is not None and not ready and not waiting:
                    go_on = yield from self._lost(lost)
                    if not go_on:
                        return
                    lost = None
        finally:
            self._close_stream()

    def join(self, timeout_s: float = 10.0) -> None:
        """After `stop()`: wait (up to `timeout_s`) for the reader threads, each of which ends once its
        worker is gone; a process that exits next has none left inside a read (the CLI calls it; the
        service does not block its event loop on it)."""
        deadline = time.monotonic() + timeout_s
        for reader in self.readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        self.readers = [t for t in self.readers if t.is_alive()]

    def _lost(self, reason: str) -> Iterator[dict[str, Any]]:
        """The current connection ended: say so, and reopen after the backoff (True) or give up (False)."""
        name = self.source.name
        if self.source.pipe or self.closed.is_set():
            self.ended = reason
            yield event("ended", f"{name}: {reason}", failed=reason != ENDED or not self.windows)
            return False
        self.attempt = 1 if self.got_windows else self.attempt + 1
        self.got_windows = False
        if self.attempt > self.reconnects:
            self.ended = reason
            more = f"; gave up after {self.reconnects} reconnects in a row" if self.reconnects else ""
            yield event("ended", f"{name}: {reason}{more}", failed=True)
            return False
        wait = backoff(self.attempt)
        yield event("lost", f"{name}: {reason}; reconnecting in {wait:g} s (attempt {self.attempt} of "
                            f"{self.reconnects})", reason=reason)
        if self.closed.wait(wait):
            return False
        self.connection += 1
        self.reconnected += 1
        elapsed = time.monotonic() - self.started
        self.offsets[self.connection] = max(self.last_end, self.hop * math.ceil(elapsed / self.hop))
        self._close_stream()
        self._open(self.connection)
        yield event("reconnect", f"{name}: reconnecting (stream time goes on at "
                                 f"{self.offsets[self.connection]:.2f} s)", reconnects=self.reconnected)
        return True

    def _classify(self, items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        t0 = time.perf_counter()
        probs = pipeline.infer(items, self.predictor)
        share = (time.perf_counter() - t0) * 1e3 / len(items)
        now = time.monotonic()
        for item, p in zip(items, probs):
            self.windows += 1
            offset = self.offsets.get(item["connection"], 0.0)
            line = window_line(self.source.name, item, p, self.predictor, self.top_k, offset, share, now,
                               self.dropped)
            self.latency.add(line["latency_ms"])
            self.last_end = max(self.last_end, line["end"])
            if self.windows % TRIM_EVERY == 0:
                release_memory()  # see media.live.release_memory
            yield line

    def _close_stream(self) -> None:
        stream, self.stream = self.stream, None
        close = getattr(stream, "close", None)
        if close is not None:
            close()

    def stop(self) -> None:
        """End `run()` at its next line and kill the decode worker now (from any thread)."""
        self.closed.set()
        with self.cond:
            self.cond.notify_all()
        self._close_stream()

    def summary(self) -> dict[str, Any]:
        return {"summary": {"source": self.source.name, "windows": self.windows, "dropped": self.dropped,
                            "latency_ms": self.latency.summary(), "reconnects": self.reconnected,
                            "seconds": round(time.monotonic() - self.started, 1),
                            "stream_s": round(self.last_end, 3), "ended": self.ended or "stopped"}}
