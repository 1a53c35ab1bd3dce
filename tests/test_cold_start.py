"""The inference path never imports torch: `mmdeploy classify` (one file, a timeline, a folder) and `mmdeploy
batch` on an exported bundle with every non-torch backend of the registry, each in a fresh process, and
their decode workers too; the torch backend still works (and is the only one that loads it). Timing is not
asserted here: benchmarks/classify.py measures the cold start (--sections cold)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmdeploy.runtime import REGISTRY

REPO = Path(__file__).resolve().parents[1]
CLIP = "cremad_1001_DFA_ANG_XX.flv"

# Runs the CLI in this process, then asks a decode worker (forked from the same forkserver) what it loaded.
PROBE = """
import json, sys
from mmdeploy.cli import main
sys.argv = ["mmdeploy", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
from mmdeploy import isolate
worker = isolate.call("probe", eval, ("sorted(m for m in ('torch', 'torchaudio') if m in __import__('sys').modules)",), 60)
print(json.dumps({"code": code, "here": sorted(m for m in ("torch", "torchaudio") if m in sys.modules),
                  "worker": worker}), file=sys.stderr)
"""


def run_probe(args: list[str], tmp_path: Path) -> tuple[dict, list[dict]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=env)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    report = [json.loads(x) for x in proc.stderr.splitlines() if x.startswith('{"code"')]
    assert report, f"the probe did not report:\n{proc.stderr[-3000:]}"
    return report[-1], lines


NON_TORCH = sorted(n for n in REGISTRY if not n.startswith("torch"))


@pytest.mark.parametrize("backend", NON_TORCH)
def test_classify_never_imports_torch(request, media_dir, tmp_path, backend):
    from mmdeploy.runtime import backend_reasons

    engine = any(need.startswith("cpu-engine:") for need in REGISTRY[backend].needs)
    run, _ = request.getfixturevalue("tiny_cpu_engines" if engine else "tiny_exported")  # CPU engines: exported
    reason = backend_reasons(run, (backend,))[backend]
    if reason is not None:
        pytest.skip(f"{backend} cannot run here: {reason}")
    report, lines = run_probe(["classify", str(media_dir / CLIP), "--model", str(run), "--backend", backend,
                               "--json"], tmp_path)
    assert report == {"code": 0, "here": [], "worker": []}
    assert len(lines) == 1 and lines[0]["backend"] == backend and lines[0]["label"] in lines[0]["probs"]


@pytest.mark.parametrize("extra", [["--window", "1", "--hop", "1"], ["grid_s1_bbaf2n.mpg", "--workers", "2"]],
                         ids=["timeline", "two-files-two-workers"])
def test_timeline_and_files_never_import_torch(tiny_exported, media_dir, tmp_path, extra):
    run, _ = tiny_exported
    extra = [str(media_dir / a) if a.endswith(".mpg") else a for a in extra]
    report, lines = run_probe(["classify", str(media_dir / CLIP), *extra, "--model", str(run), "--json"], tmp_path)
    assert report == {"code": 0, "here": [], "worker": []}
    assert len([line for line in lines if "backend" in line]) == (1 if "--window" in extra else 2)
    assert all(line["backend"] == "onnxruntime-cpu" for line in lines if "backend" in line)


def test_batch_local_never_imports_torch(tiny_exported, media_dir, tmp_path):
    run, _ = tiny_exported
    report, _ = run_probe(["batch", str(media_dir / CLIP), "--model", str(run), "--out", str(tmp_path / "out"),
                           "--engine", "local", "--backend", "onnxruntime"], tmp_path)
    assert report == {"code": 0, "here": [], "worker": []}
    assert list((tmp_path / "out").glob("part-*.parquet"))


def test_torch_backend_still_loads_torch(tiny_exported, media_dir, tmp_path):
    """torch is imported where it is needed: the torch backend (the workers still decode without it)."""
    run, _ = tiny_exported
    report, lines = run_probe(["classify", str(media_dir / CLIP), "--model", str(run), "--backend", "torch",
                               "--json"], tmp_path)
    assert report["code"] == 0 and "torch" in report["here"] and report["worker"] == []
    assert lines[0]["backend"] == "torch-cpu"


def test_onnx_metadata_without_the_onnx_package(tiny_exported, tmp_path):
    """runtime/onnx_props reads what onnx.load reads (the cold path never imports onnx), and refuses damage."""
    import onnx

    from mmdeploy.errors import MmdeployError
    from mmdeploy.runtime.onnx_props import metadata_props
    from mmdeploy.runtime.ort_backend import read_onnx_metadata

    path = tiny_exported[0] / "export" / "model.onnx"
    data = path.read_bytes()
    expected = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert metadata_props(data) == expected and "mmdeploy.spec" in expected
    for bad in (data[: len(data) // 2], b"\xff" * 64, b"\x72\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"):
        with pytest.raises(ValueError):
            metadata_props(bad)
        (tmp_path / "bad.onnx").write_bytes(bad)
        with pytest.raises(MmdeployError, match="bad.onnx: not a readable ONNX file"):
            read_onnx_metadata(tmp_path / "bad.onnx")
