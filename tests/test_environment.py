"""The environment check (`mmdeploy doctor`, the test session's first step) and the CLI's conventions."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mmdeploy import environment


def test_this_environment_is_whole_and_matches_the_pins():
    assert environment.problems() == []
    wanted = environment._wanted()
    assert wanted["torch"] == "==2.11.0" and wanted["torchaudio"] == "==2.11.0"  # one exact, tested pair


def test_a_version_outside_the_pin_is_one_line_naming_package_version_and_fix(monkeypatch):
    monkeypatch.setattr(environment, "_installed", lambda dists: {"torchaudio": "2.11.1"})
    line = environment.check("torchaudio")
    assert line == f"torchaudio 2.11.1: mmdeploy needs torchaudio==2.11.0; {environment.FIX}"


def test_a_native_library_that_does_not_load_is_reported_not_raised(monkeypatch):
    def broken():
        raise OSError("libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace")

    monkeypatch.setitem(environment.CHECKS, "torchaudio", (("torchaudio",), broken))
    line = environment.check("torchaudio")
    assert line.startswith("torchaudio 2.11.0: does not load (OSError: libtorchaudio.so: undefined symbol")
    assert "\n" not in line and line.endswith(environment.FIX)


def test_both_onnxruntime_builds_installed_is_a_problem(monkeypatch):
    monkeypatch.setattr(environment, "_installed", lambda d: {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"})
    assert "both installed" in environment.check("onnxruntime")


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(environment, "_installed", lambda dists: {})
    assert environment.check("av") == f"av: not installed; {environment.FIX}"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmdeploy", *args], capture_output=True, text=True, timeout=120)


def test_version_and_short_help():
    from mmdeploy import __version__

    assert run("--version").stdout == f"mmdeploy {__version__}\n"
    short, long = run("-h"), run("--help")
    assert short.returncode == 0 and short.stdout == long.stdout and "classify" in short.stdout
    assert run("classify", "-h").stdout == run("classify", "--help").stdout


def test_doctor_reports_a_whole_environment():
    r = run("doctor")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("environment  ok")


@pytest.mark.parametrize("command", ["serve", "classify", "watch", "batch"])
def test_backend_is_validated_before_anything_runs(command, tmp_path):
    """One check of --backend against the runtime registry for every command that runs a model: one line
    naming the option, before any file, stream or model is looked at (x.mp4 does not exist)."""
    args = {"classify": ["x.mp4"], "watch": ["udp://127.0.0.1:9"], "batch": ["x.mp4", "--out", str(tmp_path)]}
    r = run(command, *args.get(command, []), "--backend", "tpu")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: --backend 'tpu': unknown; choose auto") and r.stderr.count("\n") == 1
    assert run(command, *args.get(command, []), "--backend", "openvino-int8", "-h").returncode == 0
