"""batch: Parquet rows equal classify's results, corrupt files are error rows, manifests carry columns,
reruns skip what is written, a killed run resumes with every file exactly once, timelines keep file ids,
and the Ray engine gives the same labels as the local one (a decoder crash or hang costs only its file). Ray on
several nodes, a node lost mid-run, actor restarts and the object-store cap: tests/test_ray_cluster.py."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmdeploy.batch import Assembler, Job, read_results, run_batch, to_result
from mmdeploy.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six synthetic 2-s clips and one file that is not media."""
    from mmdeploy.data.synth import generate

    root = tmp_path_factory.mktemp("archive")
    generate(root / "synth", clips=6, seed=1, classes=2, workers=1)
    clips = root / "synth" / "clips"
    (clips / "zz_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + random.Random(5).randbytes(2000))
    return clips


@pytest.fixture(scope="module")
def local(folder, tiny_bundle, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("local") / "results"
    summary = run_batch([str(folder)], out, Job(model=tiny_bundle, backend="torch"), quiet=True)
    assert (summary.done, summary.failed, summary.skipped) == (7, 1, 0)
    return read_results(out).to_pylist()


def test_parquet_schema_is_the_result_shape_field_for_field():
    """The RESULTS columns, derived from mmdeploy/results.py, are exactly the ones the format documents."""
    import pyarrow as pa

    from mmdeploy.batch import schema

    probs = pa.map_(pa.string(), pa.float64())
    opinion = pa.struct([("label", pa.string()), ("score", pa.float64()), ("agrees", pa.bool_()), ("probs", probs)])
    fields = [("path", pa.string()), ("file_id", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()),
              ("model_id", pa.string()), ("window", pa.struct([("start", pa.float64()), ("end", pa.float64())])),
              ("label", pa.string()), ("score", pa.float64()), ("probs", probs),
              ("top_k", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
              ("modalities", pa.list_(pa.string())), ("per_modality", pa.struct([("audio", opinion), ("video", opinion)])),
              ("backend", pa.string()),
              ("timings_ms", pa.struct([("decode", pa.float64()), ("features", pa.float64()), ("infer", pa.float64())])),
              ("error", pa.string()),
              ("decoding", pa.struct([("segments", pa.int64()), ("workers", pa.int64()), ("sequential", pa.string())]))]
    carried = [pa.field("speaker", pa.string())]
    assert schema(carried).equals(pa.schema([pa.field(n, t) for n, t in fields] + carried))


def by_path(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        assert r["path"] not in out, f"{r['path']} written twice"
        out[r["path"]] = r
    return out


def test_rows_equal_classify_results(folder, local, tiny_bundle):
    from mmdeploy.classify import classify_files
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(tiny_bundle, "torch")
    paths = sorted(str(p.resolve()) for p in folder.iterdir())
    expected = {r["file"]: r for r in classify_files([Path(p) for p in paths], predictor, workers=1)}
    rows = by_path(local)
    assert sorted(rows) == paths
    for path, want in expected.items():
        got = to_result(rows[path])
        if "error" in want:
            assert got == {"file": path, "error": want["error"]}
            continue
        for key in ("window", "label", "score", "probs", "top_k", "modalities", "per_modality", "backend"):
            assert got[key] == want[key], key
        assert set(got["timings_ms"]) == {"decode", "features", "infer"}


def test_corrupt_file_is_a_row_with_its_error(local, tiny_bundle):
    from mmdeploy.batch import model_id

    bad = [r for r in local if r["error"] is not None]
    assert [Path(r["path"]).name for r in bad] == ["zz_corrupt.mp4"]
    assert bad[0]["label"] is None and bad[0]["probs"] is None and bad[0]["size"] > 0
    good = [r for r in local if r["error"] is None]
    assert len(good) == 6 and {r["model_id"] for r in local} == {model_id(tiny_bundle)}
    assert all(r["label"] in ("alpha", "beta", "gamma", "delta") and len(r["file_id"]) == 16 for r in good)


def test_manifest_carries_columns_and_missing_files_are_rows(folder, tiny_bundle, tmp_path):
    names = sorted(p.name for p in folder.glob("0*.mp4"))[:2]
    rel = os.path.relpath(folder, tmp_path)
    (tmp_path / "list.csv").write_text("path,label,group\n" + "".join(f"{rel}/{n},cat{i},g{i}\n"
                                                                         for i, n in enumerate(names))
                                       + "gone.mp4,cat9,g9\n")
    out = tmp_path / "results"
    summary = run_batch([str(tmp_path / "list.csv")], out, Job(model=tiny_bundle, backend="torch"), quiet=True)
    assert (summary.done, summary.failed) == (3, 1)
    rows = by_path(read_results(out).to_pylist())
    assert {Path(p).name: (r["input_label"], r["group"]) for p, r in rows.items()} == {
        names[0]: ("cat0", "g0"), names[1]: ("cat1", "g1"), "gone.mp4": ("cat9", "g9")}
    assert rows[str(tmp_path / "gone.mp4")]["error"] == "no such file"
    assert rows[str(folder / names[0])]["label"] is not None


def test_manifest_without_path_column_is_a_config_error(tiny_bundle, tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(ConfigError, match="no `path` column"):
        run_batch([str(tmp_path / "m.csv")], tmp_path / "out", Job(model=tiny_bundle), quiet=True)


def test_rerun_skips_written_files_and_redoes_changed_ones(folder, tiny_bundle, tmp_path):
    src = sorted(folder.glob("0*.mp4"))[:3]
    for p in src:
        shutil.copy(p, tmp_path / p.name)
    out = tmp_path / "results"
    job = Job(model=tiny_bundle, backend="torch")
    first = run_batch([str(tmp_path)], out, job, quiet=True)
    again = run_batch([str(tmp_path)], out, job, quiet=True)
    assert (first.done, again.done, again.skipped) == (3, 0, 3)
    target = tmp_path / src[0].name
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: a new file_id
    third = run_batch([str(tmp_path)], out, job, quiet=True)
    assert (third.done, third.skipped) == (1, 2)
    rows = read_results(out).to_pylist()
    assert len(rows) == 4 and len({r["file_id"] for r in rows}) == 4
    assert sum(r["path"] == str(target) for r in rows) == 2


def test_other_window_options_are_refused(folder, tiny_bundle, tmp_path):
    job = Job(model=tiny_bundle, backend="torch")
    run_batch([str(sorted(folder.glob("0*.mp4"))[0])], tmp_path / "r", job, quiet=True)
    with pytest.raises(ConfigError, match="--window"):
        run_batch([str(folder)], tmp_path / "r", Job(model=tiny_bundle, backend="torch", window=1.0), quiet=True)


def test_timeline_rows_keep_the_file_id(folder, tiny_bundle, tmp_path):
    from mmdeploy.classify import classify_timeline
    from mmdeploy.runtime import load_predictor

    clip = sorted(folder.glob("0*.mp4"))[0]
    out = tmp_path / "r"
    summary = run_batch([str(clip), str(folder / "zz_corrupt.mp4")], out,
                        Job(model=tiny_bundle, backend="torch", window=1.0, hop=0.5), quiet=True)
    assert (summary.done, summary.failed) == (2, 1)
    rows = [r for r in read_results(out).to_pylist() if r["error"] is None]
    want = [w for w in classify_timeline(clip, load_predictor(tiny_bundle, "torch"), window=1.0, hop=0.5)
            if "top_k" not in w]
    assert len(rows) == len(want) >= 3 and len({r["file_id"] for r in rows}) == 1
    assert [(r["window"]["start"], r["window"]["end"], r["label"]) for r in rows] == \
        [(w["start"], w["end"], w["label"]) for w in want]
    assert all(r["per_modality"]["audio"] is not None for r in rows)


def test_assembler_waits_for_every_window_and_drops_repeats():
    asm = Assembler()
    def row(start, n=0):
        return {"file_id": "f", "window": {"start": start}, "error": None, "_rows": n}

    assert asm.add(row(1.0)) is None
    assert asm.add(row(1.0)) is None  # a retried task sent it again
    assert asm.add({"file_id": "f", "_rows": 3, "_end_only": True}) is None
    done = asm.add(row(0.0))
    assert done is None
    done = asm.add({"file_id": "f", "window": None, "error": "broke", "_rows": 0})
    assert [r["window"] and r["window"]["start"] for r in done] == [0.0, 1.0, None] and not asm.pending


def test_kill_mid_run_then_rerun_writes_every_file_once(folder, tiny_bundle, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    clips = sorted(folder.glob("0*.mp4"))
    for i in range(12):
        shutil.copy(clips[i % len(clips)], archive / f"{i:03d}.mp4")
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "mmdeploy", "batch", str(archive), "--model", str(tiny_bundle), "--out", str(out),
           "--backend", "torch", "--workers", "1", "--part-rows", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600  # start-up (imports, decode workers) is slow on a loaded machine
    while not list(out.glob("part-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert list(out.glob("part-*.parquet")), f"no part written before the kill: {err.decode()[-2000:]}"
    before = len(read_results(out))
    assert 0 < before < 12, f"the kill should land mid-run ({before} rows written)"
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{12 - before} done (0 failed), {before} skipped" in done.stdout
    rows = read_results(out).to_pylist()
    assert sorted(Path(r["path"]).name for r in rows) == [f"{i:03d}.mp4" for i in range(12)]
    assert not list(out.glob(".tmp-*"))


def test_cli_reports_summary_and_bad_input(folder, tiny_bundle, tmp_path, monkeypatch, capsys):
    from mmdeploy import cli

    monkeypatch.setattr(sys, "argv", ["mmdeploy", "batch", str(tmp_path / "nothing-here"), "--model",
                                      str(tiny_bundle), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: ") and "nothing-here" in err and "Traceback" not in err


# ---- the Ray engine ---------------------------------------------------------------------------------------
def crash_on_named(path, spec):
    """Decode job that dies on files named *crash* (as a decoder segfault would) and hangs on *hang*."""
    from mmdeploy.jobs import file_job

    if "crash" in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGKILL)
    if "hang" in os.path.basename(path):
        time.sleep(600)
    return file_job(path, spec)


def test_ray_gives_the_local_labels_and_a_crash_or_a_hang_costs_only_its_file(ray_local, folder, local,
                                                                              tiny_bundle, tmp_path):
    """Each file decodes in a decode process of its Ray task, within the run's time limit: a decoder crash and a
    decode that hangs are error rows of their own (a hang blocked its task forever before), the others the local
    engine's labels."""
    archive = tmp_path / "archive"
    shutil.copytree(folder, archive)
    shutil.copy(next(folder.glob("0*.mp4")), archive / "crash.mp4")
    shutil.copy(next(folder.glob("0*.mp4")), archive / "hang.mp4")
    out = tmp_path / "results"
    t0 = time.monotonic()
    summary = run_batch([str(archive)], out, Job(model=tiny_bundle, backend="torch", timeout=10.0), engine="ray",
                        quiet=True, ray_options={"decode_batch_files": 2, "decode_job": crash_on_named})
    assert time.monotonic() - t0 < 300
    errs = {Path(r["path"]).name: r["error"] for r in read_results(out).to_pylist() if r["error"]}
    assert (summary.done, summary.failed) == (9, 3), errs
    rows = {Path(p).name: r for p, r in by_path(read_results(out).to_pylist()).items()}
    assert rows["crash.mp4"]["error"].startswith("the decoder crashed (signal 9, SIGKILL)"), rows["crash.mp4"]
    assert rows["hang.mp4"]["error"].startswith("decoding took longer than 10 s"), rows["hang.mp4"]
    want = {Path(r["path"]).name: r for r in local}
    assert set(rows) == set(want) | {"crash.mp4", "hang.mp4"}
    for name, w in want.items():  # the crash's batch-mate was retried alone and classified
        assert (rows[name]["label"], rows[name]["error"]) == (w["label"], w["error"]), name
        if w["error"] is None:
            assert dict(rows[name]["probs"]) == pytest.approx(dict(w["probs"]), abs=1e-5)
    again = run_batch([str(archive)], out, Job(model=tiny_bundle, backend="torch"), engine="ray", quiet=True)
    assert (again.done, again.skipped) == (0, 9)


def test_ray_timeline_equals_local_timeline(ray_local, folder, tiny_bundle, tmp_path):
    files = [str(p) for p in sorted(folder.glob("0*.mp4"))[:2]] + [str(folder / "zz_corrupt.mp4")]
    job = Job(model=tiny_bundle, backend="torch", window=1.0, hop=0.5)
    run_batch(files, tmp_path / "local", job, quiet=True)
    run_batch(files, tmp_path / "ray", job, engine="ray", quiet=True)
    key = lambda r: (r["path"], r["window"] and r["window"]["start"])  # noqa: E731
    local_rows = sorted(read_results(tmp_path / "local").to_pylist(), key=key)
    ray_rows = sorted(read_results(tmp_path / "ray").to_pylist(), key=key)
    assert [(key(r), r["file_id"], r["label"], r["error"]) for r in ray_rows] == \
        [(key(r), r["file_id"], r["label"], r["error"]) for r in local_rows]
    assert len(ray_rows) >= 7


def test_a_local_ray_instance_listens_on_loopback_only(ray_local):
    """`mmdeploy batch --engine ray` without --address starts Ray through raycluster.connect: its GCS, raylet and
    workers listen on 127.0.0.1 only (they listened on every interface), and token authentication is on."""
    import psutil

    from mmdeploy.raycluster import LOOPBACK

    family = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    listening = [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in family]
    assert listening and all(ip in (LOOPBACK, "::ffff:" + LOOPBACK) for ip in listening), listening
    assert all(n["NodeManagerAddress"] == LOOPBACK for n in ray_local.nodes())
    assert os.environ.get("RAY_AUTH_MODE") == "token"  # Ray 2.59+: on for a new local instance
