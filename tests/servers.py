"""Helpers for tests that start real servers on loopback: a free port, and waiting for /readyz."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

import pytest


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
