"""Untrusted files are decoded in child processes: a decoder crash (FFmpeg can segfault on hostile bytes) or
hang costs only that file, never the CLI, a folder run or the HTTP worker.

The one mechanism: `Worker`, a child process forked from a forkserver that imported PyAV and the (numpy)
feature code once. It runs jobs (a top-level function and its arguments) one after another and sends each
answer back over a pipe; a streaming job sends items one by one (the pipe is the bounded queue: the child
blocks while the parent does not read). The parent waits with a deadline: a worker that dies (signal N)
or misses the deadline is killed and replaced, and only the job it was running fails. Healthy workers go
back to a small idle list and are reused, so a warm call costs a pipe round trip, not a process start.

For callers (`mmdeploy.pipeline`, which the CLI, batch and the HTTP service go through; all thread-safe,
call them from any thread). The jobs are `mmdeploy.jobs`'s, `options` its DecodeOptions:

    decode_isolated(path, spec, timeout=DECODE_TIMEOUT_S, options=FAST) -> dict
        The first model window of `path`, decoded and turned into features in a worker: the
        `jobs.file_job` item {file, audio, video, window{start, end}, timings_ms{decode, features}}.
        Raises MediaError(path, reason) for a bad file, a crash ("the decoder crashed (signal 11, SIGSEGV)
        ...") or a timeout ("decoding took longer than T s ...").

    iter_isolated(path, spec, window=None, hop=None, timeout=DECODE_TIMEOUT_S, options=FAST) -> IsolatedWindows
        Consecutive windows as `jobs.window_jobs` items (the same shape, one per window),
        streamed from a worker; `timeout` bounds each window. Raises MediaError like decode_isolated,
        mid-stream too. `.close()` (or leaving a `with` block, or dropping the iterator) cancels: the
        worker is killed, from any thread, at once.

    run_jobs(fn, args_list, workers, timeout) -> iterator of lists of (args, ok, value)
        Many jobs on `workers` workers, answers in completion order (one list per wake-up: whatever
        finished together); a crash or timeout fails only its own job (value is then the reason).
        `pipeline.decode_files` runs folders with it.

    prestart()  start the forkserver and one worker in the background (the CLI overlaps it with loading
                the model), so the first file does not wait for the imports.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

from mmdeploy import preload
from mmdeploy.errors import MediaError
from mmdeploy.jobs import FAST, file_job, window_jobs
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.settings import DECODE_RECYCLE_JOBS, DECODE_RECYCLE_MB, DECODE_TIMEOUT_S, cpu_count

IDLE_WORKERS = max(2, cpu_count())  # healthy workers kept for reuse
# a worker is replaced once it has run RECYCLE_JOBS jobs or its resident memory is past RECYCLE_MB after a job
# (0: never); a decoder's heap only grows (FFmpeg's buffers, the allocator's arenas), so a long-lived service
# would otherwise keep every worker at its high-water mark. pipeline.start_decoders sets them from the settings.
RECYCLE_JOBS, RECYCLE_MB = DECODE_RECYCLE_JOBS, DECODE_RECYCLE_MB
PRELOAD = preload.PRELOAD  # what the forkserver imports (mmdeploy/preload.py): no torch, one BLAS thread


class WorkerLost(Exception):
    """The worker died or missed its deadline; `reason` says which, for the file's error message."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def crash_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return (f"the decoder crashed (signal {-exitcode}, {name}) while reading this file; "
                "the file is damaged or hostile")
    return f"the decoder process exited unexpectedly (exit code {exitcode}) while reading this file"


def timeout_reason(timeout: float | None) -> str:
    return (f"decoding took longer than {timeout:g} s; the file is damaged or too slow to decode "
            "(a longer timeout allows it)")


def _context():
    """forkserver with PyAV and the feature code preloaded: each worker forks from a process that imported
    them once (spawn would import them per worker; fork is unsafe after torch or ONNX Runtime threads start)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class Worker:
    """One child process that runs jobs in order; see the module docstring.

    Our end of the pipe is closed exactly once, whatever order the reading
    thread, a timeout and a `kill()` from another thread run in: `kill()` only stops the child while
    another thread is reading (that read then wakes on the child's death and closes them on its way out);
    with nobody reading, `kill()` closes them itself. A descriptor number is thus never closed under a
    thread that still waits on it (where it may already belong to another request's socket or file)."""

    _start_lock = threading.Lock()

    def __init__(self):
        ctx = _context()
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_serve, args=(child,), daemon=True, name="mmdeploy-decode")
        with Worker._start_lock:  # multiprocessing's bookkeeping of children is not thread-safe
            self.process.start()
        child.close()
        self.cancelled = False
        self._lock = threading.Lock()
        self._reading = False  # a thread is inside receive()
        self._stopped = False  # kill() ran: no further job; descriptors closed by the reader, else by kill()
        self._closed = False
        self.jobs = 0  # jobs sent

    def send(self, fn: Callable, args: tuple, stream: bool = False) -> None:
        with self._lock:
            if self._stopped:
                raise OSError("the decode worker was stopped")
        self.jobs += 1
        self.conn.send((fn, args, stream))

    def rss_mb(self) -> float | None:
        """The child's resident memory in MB (Linux /proc), None where unknown."""
        try:
            with open(f"/proc/{self.process.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return None

    def worn(self) -> bool:
        """Due for replacement: RECYCLE_JOBS jobs run, or past RECYCLE_MB of resident memory."""
        if RECYCLE_JOBS and self.jobs >= RECYCLE_JOBS:
            return True
        rss = self.rss_mb() if RECYCLE_MB else None
        return rss is not None and rss > RECYCLE_MB

    def receive(self, timeout: float | None) -> tuple[str, Any]:
        """The next message ("ok"|"item"|"end"|"error", value); WorkerLost (and the worker killed) if it
        dies, is killed (from any thread) or sends nothing for `timeout` seconds."""
        with self._lock:
            if self._stopped:
                raise WorkerLost("cancelled" if self.cancelled else crash_reason(self.process.exitcode))
            self._reading = True
        try:
            return self._receive(timeout)
        finally:
            with self._lock:
                self._reading = False
                release = self._stopped and not self._closed
                self._closed = self._closed or release
            if release:
                self._release()

    def _receive(self, timeout: float | None) -> tuple[str, Any]:
        try:
            ready = wait([self.conn, self.process.sentinel], timeout)
            if self.conn in ready:  # an answer sent just before dying still counts
                return self.conn.recv()
        except (EOFError, OSError):  # it died mid-message (or was killed)
            ready = [self.process.sentinel]
        self.kill()
        if self.cancelled:
            raise WorkerLost("cancelled")
        if not ready:
            raise WorkerLost(timeout_reason(timeout))
        self.process.join(5)
        raise WorkerLost(crash_reason(self.process.exitcode))

    def alive(self) -> bool:
        with self._lock:
            return not self._stopped and self.process.is_alive()

    def kill(self) -> None:
        """Stop the child at once (any thread, any number of times); see the class docstring."""
        with self._lock:
            self._stopped = True
            release = not self._reading and not self._closed
            self._closed = self._closed or release
            if self.process.exitcode is None:
                try:
                    self.process.kill()
                except (OSError, ValueError, AttributeError):
                    pass
        if release:
            self._release()

    def _release(self) -> None:
        """Reap the child and close our end of the pipe (called exactly once; the sentinel is the Process
        object's, closed once by its finalizer)."""
        self.process.join(5)
        self.conn.close()


def _serve(conn) -> None:
    """The worker's loop: (fn, args, stream) in; ("ok", value) | ("item", x)... ("end", None) |
    ("error", reason) out. Ends when the parent closes its end of the pipe."""
    from mmdeploy.errors import reason

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it then stops us
    while True:
        try:
            fn, args, stream = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if stream:
                for item in fn(*args):
                    conn.send(("item", item))
                conn.send(("end", None))
            else:
                conn.send(("ok", fn(*args)))
        except Exception as exc:  # noqa: BLE001 - a bad file, a bug or an unforeseen decoder failure: this file only
            conn.send(("error", reason(exc)))


# ---- reuse ------------------------------------------------------------------------------------------
_idle: list[Worker] = []
_idle_lock = threading.Lock()
_prestart: threading.Thread | None = None


def checkout() -> Worker:
    """An idle healthy worker, or a new one."""
    starter = _prestart
    if starter is not None and starter is not threading.current_thread():
        starter.join()
    with _idle_lock:
        while _idle:
            worker = _idle.pop()
            if worker.alive():
                return worker
            worker.kill()
    return Worker()


def checkin(worker: Worker) -> None:
    """Give back a worker that finished its job cleanly (others are killed, never reused); a worn one
    (`Worker.worn`) is replaced by a fresh one, started in the background."""
    if worker.alive() and worker.worn():
        worker.kill()
        recycled()
        return
    with _idle_lock:
        if worker.alive() and len(_idle) < IDLE_WORKERS:
            _idle.append(worker)
            return
    worker.kill()


def recycled() -> None:
    """Count a replaced worker and start its successor in the background (no request waits for the fork)."""
    global RECYCLED
    thread = threading.Thread(target=lambda: checkin(Worker()), daemon=True, name="mmdeploy-recycle")
    with _idle_lock:
        RECYCLED += 1
        _starting[:] = [t for t in _starting if t.is_alive()] + [thread]
    thread.start()


RECYCLED = 0  # workers replaced for wear in this process
_starting: list[threading.Thread] = []  # successors being started (shutdown waits for them)


def prestart() -> None:
    """Start the forkserver and one worker in a background thread (no-op if one is idle or starting)."""
    global _prestart
    with _idle_lock:
        if _idle or (_prestart is not None and _prestart.is_alive()):
            return
        _prestart = threading.Thread(target=lambda: checkin(Worker()), daemon=True, name="mmdeploy-prestart")
        _prestart.start()


def shutdown() -> None:
    """Stop the idle workers (they also exit on their own when this process ends)."""
    with _idle_lock:
        starting = list(_starting)
    for thread in starting:
        thread.join(10)
    with _idle_lock:
        workers, _idle[:] = list(_idle), []
    for worker in workers:
        worker.kill()


# ---- one file, one stream ---------------------------------------------------------------------------
def call(path, fn: Callable, args: tuple, timeout: float | None = DECODE_TIMEOUT_S) -> Any:
    """fn(*args) in a worker -> its value; MediaError(path, reason) for a crash, timeout or bad file."""
    worker = checkout()
    try:
        worker.send(fn, args)
        kind, value = worker.receive(timeout)
    except WorkerLost as lost:
        raise MediaError(path, lost.reason) from None
    checkin(worker)
    if kind == "error":
        raise MediaError(path, value)
    return value


def decode_isolated(path, spec, timeout: float | None = DECODE_TIMEOUT_S,
                    options: DecodeOptions = FAST) -> dict[str, Any]:
    """The first window of `path` -> features, in a worker (see the module docstring)."""
    job = call(path, file_job, (str(path), spec, options), timeout)
    if "error" in job:
        raise MediaError(path, job["error"])
    return job


class IsolatedWindows:
    """Iterator over a streaming job running in a worker; close() kills the worker if still running."""

    def __init__(self, path, fn: Callable, args: tuple, timeout: float | None = DECODE_TIMEOUT_S):
        self.path, self.timeout = str(path), timeout
        self._lock = threading.Lock()
        self.worker: Worker | None = checkout()
        self.worker.send(fn, args, stream=True)

    def __iter__(self) -> "IsolatedWindows":
        return self

    def __next__(self) -> Any:
        worker = self.worker
        if worker is None:
            raise StopIteration
        try:
            kind, value = worker.receive(self.timeout)
        except WorkerLost as lost:
            self.worker = None
            raise MediaError(self.path, lost.reason) from None
        if kind == "item":
            return value
        with self._lock:
            if self.worker is worker:
                self.worker = None
                checkin(worker)
        if kind == "error":
            raise MediaError(self.path, value)
        raise StopIteration

    def close(self) -> None:
        with self._lock:
            worker, self.worker = self.worker, None
        if worker is not None:
            worker.cancelled = True
            worker.kill()

    def __enter__(self) -> "IsolatedWindows":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit multiprocessing may be half torn down
            pass


def iter_isolated(path, spec, window: float | None = None, hop: float | None = None,
                  timeout: float | None = DECODE_TIMEOUT_S, options: DecodeOptions = FAST) -> IsolatedWindows:
    """Consecutive windows of `path` as feature items, streamed from a worker (see the module docstring)."""
    return IsolatedWindows(path, window_jobs, (str(path), spec, window, hop, options), timeout)


# ---- many jobs ------------------------------------------------------------------------------------
def run_jobs(fn: Callable, jobs: Iterable[tuple], workers: int, timeout: float | None = DECODE_TIMEOUT_S,
             depth: int = 2) -> Iterator[list[tuple[tuple, bool, Any]]]:
    """fn(*args) for each args in `jobs` on `workers` workers -> lists of (args, True, value) or (args,
    False, reason), in completion order, one list per wake-up (what finished together). Each worker holds
    up to `depth` jobs (the next one starts while the parent reads an answer); jobs run in order, so a dead
    worker's first unanswered job is the one that killed it: it fails, the others go back in the queue.
    The deadline runs from a job's start (the previous answer, or its send)."""
    todo = collections.deque(jobs)
    pool: dict[Worker, collections.deque] = {}
    started: dict[Worker, float] = {}
    try:
        while todo or any(pool.values()):
            while len(pool) < workers and todo:
                worker = checkout()
                pool[worker] = collections.deque()
            for worker, held in list(pool.items()):
                if worker.worn():  # no new job for it; replaced once it has answered the ones it holds
                    if not held:
                        del pool[worker]
                        worker.kill()
                        recycled()
                    continue
                while todo and len(held) < depth:
                    args = todo.popleft()
                    if not held:
                        started[worker] = time.monotonic()
                    held.append(args)
                    try:
                        worker.send(fn, args)
                    except OSError:  # it died: its sentinel is ready, the wait below reports it
                        break
            busy = [w for w, held in pool.items() if held]
            if not busy:
                continue  # (a worker was just retired: the loop checks out its successor)
            now = time.monotonic()
            wait_s = None if timeout is None else max(0.0, min(started[w] + timeout - now for w in busy))
            ready = set(wait([c for w in busy for c in (w.conn, w.process.sentinel)], wait_s))
            answers = []
            for worker in busy:
                held = pool[worker]
                if ready & {worker.conn, worker.process.sentinel}:
                    try:
                        kind, value = worker.receive(0)
                        reason = None
                    except WorkerLost as lost:
                        reason = lost.reason
                elif timeout is not None and time.monotonic() - started[worker] > timeout:
                    worker.kill()
                    reason = timeout_reason(timeout)
                else:
                    continue
                args = held.popleft()
                if reason is not None:  # this job killed its worker; the others it held go back first
                    todo.extendleft(reversed(held))
                    del pool[worker]
                    answers.append((args, False, reason))
                    continue
                started[worker] = time.monotonic()
                answers.append((args, kind == "ok", value))
            if answers:
                yield answers
    finally:
        for worker, held in pool.items():
            if held:
                worker.kill()
            else:
                checkin(worker)
