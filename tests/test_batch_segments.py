"""`batch --engine ray --timeline` spreads a long file over several decode tasks, cut at the keyframes of the CLI's
segment plan (media/keyframes.py): each segment's windows are bit-identical to the sequential decode's, the driver
puts them back in order (a failing segment ends the file as the sequential decode would), the rows say how the
file was decoded, and a file the plan does not split (a container whose seeks are not frame-exact, a bad file)
is one task with the reason. The pure parts (coarsen, expand, blocks, the Assembler) are tested without Ray."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import numpy as np
import pytest

from mmdeploy.batch import Assembler, Job, Source, read_results, run_batch
from mmdeploy.batch.ray_engine import Classifier, blocks
from mmdeploy.batch.ray_segments import coarsen, expand, segment_windows
from mmdeploy.batch.rows import join_segments
from tests.test_decode_exact import X264_B, write_video
from tests.test_segments import same_answer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SRC = Source("/a/long.mp4", "f1", 10, 1)


# ---- pure functions ---------------------------------------------------------------------------------------
def test_coarsen_merges_adjacent_spans_at_the_plans_cuts():
    spans = [(0, 30), (30, 61), (61, 90), (90, 120), (120, 150)]
    assert coarsen(spans, 8) == spans
    assert coarsen(spans, 2) == [(0, 61), (61, 150)]  # a cut is one of the plan's (after a keyframe), nearest 75
    assert coarsen(spans, 3) == [(0, 61), (61, 90), (90, 150)]
    assert coarsen([(0, 2), (2, 4), (4, 200)], 2) == [(0, 4), (4, 200)]  # uneven: still split


def test_expand_gives_one_input_per_segment_or_the_file_with_its_reason():
    plan = {"segments": [[0, 10], [10, 21], [21, 30]], "reason": None, "has_audio": True}
    got = expand(SRC, plan, most=2)
    assert [x["segment"]["span"] for x in got] == [[0, 10], [10, 30]]
    assert [x["segment"]["index"] for x in got] == [0, 1] and {x["segment"]["of"] for x in got} == {2}
    assert all(x["decoding"] == {"segments": 2, "workers": 2, "sequential": None} for x in got)
    assert all(Source(**{k: v for k, v in x.items() if k not in ("segment", "decoding")}) == SRC for x in got)
    one = expand(SRC, {"segments": [], "reason": "container flv: not exact", "has_audio": True}, most=4)
    assert one == [{**SRC.__dict__, "decoding": {"segments": 1, "workers": 1, "sequential": "container flv: not exact"}}]


def test_blocks_give_each_segment_a_task_of_its_own():
    files = [{"file_id": f"f{i}"} for i in range(5)]
    segs = [{"file_id": "s", "segment": {"index": i}} for i in range(3)]
    got = blocks(files[:2] + segs + files[2:], 2)
    assert [[x["file_id"] for x in b] for b in got] == [["f0", "f1"], ["s"], ["s"], ["s"], ["f2", "f3"], ["f4"]]


def window(fid, start, n=None, seg=None):
    """A row as the driver receives it (n: the `_rows` count it carries), or as written (n None)."""
    row = {"file_id": fid, "window": {"start": start}, "error": None}
    if n is not None:
        row["_rows"] = n
    return {**row, "_segment": seg} if seg else row


def test_assembler_puts_segments_back_in_order_and_drops_repeats():
    asm = Assembler()
    s0, s1, s2 = ({"index": i, "of": 3} for i in range(3))
    assert asm.add(window("f", 3.0, 2, s1)) is None  # segments arrive in any order
    assert asm.add(window("f", 2.0, 0, s1)) is None
    assert asm.add(window("f", 2.0, 0, s1)) is None  # a retried segment task sent it again
    assert asm.add({"file_id": "f", "_rows": 0, "_end_only": True, "_segment": s2}) is None  # no window in it
    assert asm.add(window("g", 0.0, 1)) == [window("g", 0.0)] and "f" in asm.segments  # other files meanwhile
    assert asm.add(window("f", 1.0, 0, s0)) is None
    done = asm.add(window("f", 0.0, 2, s0))
    assert done == [window("f", s) for s in (0.0, 1.0, 2.0, 3.0)]
    assert not asm.pending and not asm.expected and not asm.segments


def test_a_failing_segment_ends_the_file_like_the_sequential_decode():
    """The sequential decode keeps the windows before a failure and stops: the windows of the segments after
    the first failing one are dropped, and its error row ends the file."""
    ok = lambda *starts: [{"window": {"start": s}, "error": None} for s in starts]  # noqa: E731
    err = {"window": None, "error": "the decoder crashed (signal 11, SIGSEGV)"}
    assert join_segments([ok(0, 1), ok(2) + [err], ok(3, 4)]) == ok(0, 1, 2) + [err]
    assert join_segments([ok(0, 1), [err], [err]]) == ok(0, 1) + [err]
    assert join_segments([ok(0), [], ok(5)]) == ok(0, 5) and join_segments([[], []]) == []


# ---- decoding: isolated workers, no Ray -------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory):
    """22 s of H.264 with B-frames (a keyframe every 1.6 s) and AAC: the plan cuts it in two 11-s segments."""
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", "libx264", X264_B, seconds=22.0, size=(64, 48))


def sequential_items(path, spec, window, hop):
    from mmdeploy.jobs import window_jobs

    return list(window_jobs(str(path), spec, window, hop))


def same_items(got: list[dict], want: list[dict]) -> None:
    assert [x["window"] for x in got] == [x["window"] for x in want]
    for x, y in zip(got, want):
        for m in ("audio", "video"):
            assert (x[m] is None) == (y[m] is None) and (x[m] is None or np.array_equal(x[m], y[m])), (m, x["window"])


def test_segments_decoded_apart_equal_the_sequential_decode(long_mp4, tiny_spec):
    """segment_windows (video from the keyframe before the span, audio from the file's start) in decode processes,
    segment after segment: the sequential items, bit for bit, windows straddling the cuts included."""
    from mmdeploy.jobs import plan_job
    from mmdeploy.pipeline import FAST

    plan = plan_job(str(long_mp4), tiny_spec, 2.0, 1.0, 2)
    assert plan.split and len(plan.segments) == 2, plan.reason
    got = [item for k0, k1 in plan.segments for item in
           segment_windows(str(long_mp4), tiny_spec, 2.0, 1.0, 60.0, FAST, {"span": [k0, k1], "audio": True})]
    same_items(got, sequential_items(long_mp4, tiny_spec, 2.0, 1.0))


# ---- the Ray engine (one run) -----------------------------------------------------------------------------
def digest(audio, video) -> str:
    h = hashlib.blake2b(digest_size=8)
    for x in (audio, video):
        h.update(b"-" if x is None else np.ascontiguousarray(x, np.float32).tobytes())
    return h.hexdigest()


class DigestClassifier(Classifier):
    """The inference actor, writing the digest of each window's input tensors into `backend`."""

    def __call__(self, batch):
        out = super().__call__(batch)
        rows = [json.loads(str(r)) for r in out["row"]]
        for i, row in enumerate(rows):
            if row.get("label") is not None:
                row["backend"] = digest(batch["audio"][i] if batch["has_audio"][i] else None,
                                        batch["video"][i] if batch["has_video"][i] else None)
        return {"row": np.array([json.dumps(r) for r in rows], dtype=object)}


def test_ray_spreads_a_long_file_over_segment_tasks_and_equals_the_local_engine(ray_local, long_mp4, tiny_bundle,
                                                                                 tiny_spec, tmp_path):
    """A 22-s MP4 in two segment tasks, a FLV (seeks not frame-exact) and a file that is not media: every window's
    tensors are the sequential decode's (digests), its probabilities the local engine's, in order; the rows
    say how each file was decoded."""
    flv = write_video(tmp_path / "clip.flv", "libx264", X264_B, seconds=4.0, size=(64, 48))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + random.Random(5).randbytes(2000))
    files = [str(long_mp4), str(flv), str(bad)]
    job = Job(model=tiny_bundle, backend="torch", window=2.0, hop=1.0)
    run_batch(files, tmp_path / "local", job, quiet=True)
    summary = run_batch(files, tmp_path / "ray", job, engine="ray", quiet=True,
                        ray_options={"decoders": 2, "classifier": DigestClassifier})
    assert (summary.done, summary.failed) == (3, 1)

    def rows_of(out):
        rows: dict[str, list] = {}
        for r in read_results(out).to_pylist():  # parts hold whole files, each in window order
            rows.setdefault(r["path"], []).append(r)
        return rows

    local, ray = rows_of(tmp_path / "local"), rows_of(tmp_path / "ray")
    assert sorted(ray) == sorted(local)
    for path in files:
        assert [r["window"] for r in ray[path]] == [r["window"] for r in local[path]], path
        for a, b in zip(ray[path], local[path]):
            assert (a["label"], a["error"], a["file_id"]) == (b["label"], b["error"], b["file_id"])
            if a["error"] is None:
                same_answer(a, b)  # the tensors: bit for bit, below
    want = [digest(x["audio"], x["video"]) for x in sequential_items(long_mp4, tiny_spec, 2.0, 1.0)]
    assert [r["backend"] for r in ray[str(long_mp4)]] == want  # bit-identical tensors, in order
    assert {json.dumps(r["decoding"]) for r in ray[str(long_mp4)]} == \
        {json.dumps({"segments": 2, "workers": 2, "sequential": None})}
    assert "container flv" in ray[str(flv)][0]["decoding"]["sequential"]
    assert ray[str(bad)][0]["decoding"]["segments"] == 1 and ray[str(bad)][0]["decoding"]["sequential"]
    # the local engine, 3 files on 2 workers: one pass per file (each worker busy with a file of its own)
    assert {r["decoding"]["sequential"] for rows in local.values() for r in rows} == {"one decode worker"}


def test_local_engine_splits_one_long_file_over_its_workers(long_mp4, tiny_bundle, tmp_path):
    """One file, two decode workers: the local engine cuts its timeline at keyframes like `classify` (rows say so)
    and writes exactly the rows of one sequential pass (workers=1)."""
    job = Job(model=tiny_bundle, backend="torch", window=2.0, hop=1.0)
    run_batch([str(long_mp4)], tmp_path / "split", dataclasses.replace(job, workers=2), quiet=True)
    run_batch([str(long_mp4)], tmp_path / "one", dataclasses.replace(job, workers=1), quiet=True)
    split, one = (read_results(tmp_path / name).to_pylist() for name in ("split", "one"))
    assert split[0]["decoding"]["segments"] >= 2 and split[0]["decoding"]["workers"] == 2
    assert one[0]["decoding"] == {"segments": 1, "workers": 1, "sequential": "one decode worker"}
    assert [r["window"] for r in split] == [r["window"] for r in one] and len(one) >= 20
    for a, b in zip(split, one):
        same_answer(a, b)
