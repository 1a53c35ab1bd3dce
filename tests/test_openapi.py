"""Schemathesis (property-based, driven by the service's own OpenAPI document at /docs.json) against the shared
test server: a bounded run of every check (no 5xx, status codes, content types, headers and bodies as documented,
schema-invalid requests refused, schema-valid ones taken or refused only as undecodable media, undocumented
methods 405; negative_data_rejection is off, see why in tests/schemathesis.toml). Settings: tests/schemathesis.toml; hooks (NDJSON lines checked, real clips in two uploads of three):
tests/openapi_hooks.py. The longer run is the README's (serving section)."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_serving import served_run, server  # noqa: F401 - the shared server (one per session)

pytest.importorskip("schemathesis")
pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
EXAMPLES = 150  # per operation and phase; with --max-time, the run stays within about a minute here


def answers(report: Path) -> collections.Counter:
    """(method path, status) of every answer in a Schemathesis NDJSON report."""
    seen: collections.Counter = collections.Counter()

    def walk(node, request=None):
        if isinstance(node, dict):
            request = node.get("request", request)
            response = node.get("response")
            if isinstance(response, dict) and isinstance(response.get("status_code"), int) and request:
                path = "/" + str(request.get("uri", "")).split("/", 3)[-1].split("?")[0]
                seen[(request.get("method"), path, response["status_code"])] += 1
            for value in node.values():
                walk(value, request)
        elif isinstance(node, list):
            for value in node:
                walk(value, request)

    for line in report.read_text().splitlines():
        walk(json.loads(line))
    return seen


def test_the_service_matches_its_openapi_document(server, tmp_path):  # noqa: F811
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.openapi_hooks", "PYTHONPATH": str(TESTS.parent)}
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(TESTS / "schemathesis.toml"), "run",
               server + "/docs.json", "--checks", "all", "--exclude-checks",
               "negative_data_rejection", "-n", str(EXAMPLES), "--max-time", "60", "--seed", "20",
               "--workers", "2", "--generation-database", "none", "--request-timeout", "120", "--no-color",
               "--report", "ndjson", "--report-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "No issues found" in done.stdout, done.stdout[-6000:] + done.stderr[-2000:]
    seen = answers(next(tmp_path.glob("*.ndjson")))
    statuses = collections.Counter(status for (_, path, status), n in seen.items() for _ in range(n)
                                   if path in ("/classify", "/timeline"))
    assert not [s for s in statuses if s >= 500], statuses
    ok = {path for (method, path, status) in seen if status == 200 and method == "POST"}
    assert ok == {"/classify", "/timeline"}, seen  # real clips were classified, NDJSON lines checked
    assert statuses[400] and statuses[422], statuses
