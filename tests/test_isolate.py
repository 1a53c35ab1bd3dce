"""Closing a timeline at any stage closes each descriptor exactly once (issue #24): before the first window,
mid-stream (while the thread that drains the worker waits on its pipe), after the end, and from another
thread. A descriptor closed twice is not harmless in a threaded server (the number may already belong to
another request's socket or file), so these tests fail on any exception Python could only print ("Exception
ignored in ...") and on any descriptor left open or closed behind a reader's back."""
from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from mmdeploy import isolate
from mmdeploy.classify import classify_timeline
from mmdeploy.errors import MediaError
from mmdeploy.jobs import window_jobs
from tests.test_classify import write_clip

pytestmark = [pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")]


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    from mmdeploy.runtime import load_predictor

    return load_predictor(tiny_bundle, "torch")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("isolate") / "long.mp4", 8.0)


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture()
def no_leaks(monkeypatch):
    """Records what Python could only print (unraisable exceptions), and checks that every descriptor the
    test opened is closed again once the idle workers are stopped (the forkserver's own stay open)."""
    isolate.checkin(isolate.checkout())  # the forkserver is up before the count
    isolate.shutdown()
    gc.collect()
    before = open_fds()
    printed: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(f"{u.exc_type.__name__}: {u.exc_value}"))
    yield
    isolate.shutdown()
    gc.collect()
    assert printed == []
    deadline = time.monotonic() + 10
    while open_fds() - before and time.monotonic() < deadline:  # a reaped child's sentinel closes on collection
        multiprocessing.active_children()  # forgets the children that ended
        gc.collect()
        time.sleep(0.05)
    assert open_fds() - before == set()


def rows(path: Path, predictor, **kw):
    return classify_timeline(path, predictor, window=1.0, batch_size=1, **kw)


def test_close_before_the_first_window(long_clip, predictor, no_leaks):
    timeline = rows(long_clip, predictor)
    timeline.close()  # never started: no worker was taken
    windows = isolate.iter_isolated(long_clip, predictor.spec, window=1.0)  # started, never read
    process = windows.worker.process
    windows.close()
    windows.close()
    process.join(5)
    assert not process.is_alive() and list(windows) == []


@pytest.mark.parametrize("taken", [1, 3])
def test_close_mid_stream_while_the_drain_thread_waits(long_clip, predictor, no_leaks, taken):
    """The issue's case: the drain thread is inside the worker's receive when the generator is closed."""
    timeline = rows(long_clip, predictor)
    got = [next(timeline) for _ in range(taken)]
    assert [r["start"] for r in got] == [float(i) for i in range(taken)]
    timeline.close()
    timeline.close()


def test_close_after_the_end(long_clip, predictor, no_leaks):
    timeline = rows(long_clip, predictor)
    out = list(timeline)
    assert "windows" in out[-1] and len(out[-1]["windows"]) == 8
    timeline.close()
    windows = isolate.iter_isolated(long_clip, predictor.spec, window=4.0)
    assert len(list(windows)) == 2
    windows.close()  # the worker went back to the idle list: close leaves it alone
    assert isolate._idle


def test_close_from_another_thread_while_it_reads(long_clip, predictor, no_leaks):
    windows = isolate.iter_isolated(long_clip, predictor.spec, window=0.5, hop=0.25)
    seen, failures = [], []
    first = threading.Event()

    def read() -> None:
        try:
            for item in windows:
                seen.append(item)
                first.set()
        except MediaError as exc:
            failures.append(exc.reason)
        finally:
            first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(60)
    process = windows.worker.process if windows.worker is not None else None
    windows.close()
    reader.join(30)
    assert not reader.is_alive()
    assert seen and failures in ([], ["cancelled"])
    if process is not None:
        process.join(5)
        assert not process.is_alive()


def test_kill_races_a_reader_and_a_second_kill(long_clip, predictor, no_leaks):
    """Worker.kill from two threads while a third reads: one close of the pipe, no error anywhere."""
    for _ in range(3):
        worker = isolate.checkout()
        worker.send(window_jobs, (str(long_clip), predictor.spec, 0.5, 0.25), stream=True)
        errors: list[BaseException] = []

        def read() -> None:
            try:
                while worker.receive(30)[0] == "item":
                    pass
            except isolate.WorkerLost:
                pass
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=read), threading.Thread(target=worker.kill),
                   threading.Thread(target=worker.kill)]
        threads[0].start()
        time.sleep(0.2)
        for t in threads[1:]:
            t.start()
        for t in threads:
            t.join(30)
        assert errors == [] and not worker.alive() and worker.conn.closed


# ---- recycling: a worker is replaced after RECYCLE_JOBS jobs or past RECYCLE_MB ---------------------------
def worker_pid(_: int) -> int:
    return os.getpid()


def hold_mb(mb: int) -> int:
    """Grow this worker's heap by `mb` MB and keep it (a decoder whose buffers never shrink)."""
    global _HELD
    _HELD = bytearray(mb << 20)
    return os.getpid()


def test_a_worker_is_replaced_after_its_jobs_and_its_successor_runs_the_next(monkeypatch, no_leaks):
    monkeypatch.setattr(isolate, "RECYCLE_JOBS", 3)
    monkeypatch.setattr(isolate, "RECYCLE_MB", 0)
    before = isolate.RECYCLED
    pids = [isolate.call("job", worker_pid, (i,)) for i in range(7)]
    assert len(set(pids[0:3])) == 1 and len(set(pids[3:6])) == 1 and pids[0] != pids[3] != pids[6], pids
    assert isolate.RECYCLED - before == 2
    answers = [a for batch in isolate.run_jobs(worker_pid, [(i,) for i in range(8)], workers=1) for a in batch]
    assert sorted(args for args, _, _ in answers) == [(i,) for i in range(8)] and all(ok for _, ok, _ in answers)
    folder = [value for _, _, value in answers]
    assert max(folder.count(pid) for pid in set(folder)) <= 3 and len(set(folder)) >= 3, folder


def test_a_worker_past_its_memory_bound_is_replaced(monkeypatch, no_leaks):
    monkeypatch.setattr(isolate, "RECYCLE_JOBS", 0)
    monkeypatch.setattr(isolate, "RECYCLE_MB", 400)
    small = [isolate.call("job", worker_pid, (i,)) for i in range(2)]
    assert small[0] == small[1]  # well under the bound: kept
    grown = isolate.call("job", hold_mb, (500,))
    assert grown == small[0]
    assert isolate.call("job", worker_pid, (0,)) != grown  # it held 500 MB after its job: replaced


def test_a_failed_decode_becomes_one_line_naming_what_failed():
    """errors.reason: the text of a file's error, in the worker loop and the batch engines alike."""
    from mmdeploy.errors import ConfigError, MediaError, reason

    assert reason(MediaError("/a/b.mp4", "no audio or video track")) == "no audio or video track"
    assert reason(ConfigError("window: expected a number")) == "window: expected a number"
    assert reason(ValueError("  bad frame\nsecond line")) == "cannot decode (ValueError: bad frame)"
    assert reason(RuntimeError("x" * 500)) == f"cannot decode (RuntimeError: {'x' * 200})"
    assert reason(OSError()) == "cannot decode (OSError: )"
