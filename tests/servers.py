"""Helpers for tests (and benchmarks) that start real servers on loopback: a free port, waiting for /readyz,
stopping a server and every worker it started, a child process in a process group of its own."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest


@contextlib.contextmanager
def process_group(args: list[str], term_s: float = 0.0, **kw):
    """A child in its own process group, stopped (the whole group) on the way out if it still runs: SIGTERM and
    up to `term_s` s to end, then SIGKILL (`term_s` 0: SIGKILL at once)."""
    import signal

    proc = subprocess.Popen(args, start_new_session=True, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM if term_s > 0 else signal.SIGKILL)
            try:
                proc.wait(term_s or 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (bind port 0, read it back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, url: str, log: Path, deadline_s: float = 120, poll_s: float = 0.5) -> None:
    """Until GET url/readyz answers 200; fails the test, with the server's log tail, if the process exits or
    `deadline_s` passes first."""
    import httpx

    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"server not ready in {deadline_s} s:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(poll_s)


def stop_server(proc, timeout: float = 20.0) -> None:
    """Stop a server started with `start_new_session=True` (tests, benchmarks): SIGTERM to its process
    group (BentoML then stops its workers); after `timeout` s, SIGKILL to the group and to any worker left
    (BentoML starts each worker in a process group of its own, so the group signal alone misses them)."""
    import signal

    import psutil  # a BentoML dependency

    workers = []
    with contextlib.suppress(psutil.Error):
        workers = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for worker in psutil.wait_procs(workers, timeout=10)[1]:
        worker.kill()
