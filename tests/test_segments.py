"""Segment-parallel timelines (media/keyframes.py plans, mmdeploy/segments.py decodes): every window's tensors are
bit-identical to the sequential decode, at segment boundaries and in windows that straddle them, on H.264 with
B-frames (MP4, MKV), VFR, VP8 and VP9 (WebM); sparse keyframes, MPEG-PS/TS (whose seeks are not frame-exact),
audio-only files, short files and one worker fall back to one pass and say why; a failing segment keeps the windows before it; closing stops every worker."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from mmdeploy import pipeline
from mmdeploy.errors import MediaError
from mmdeploy.media import keyframes
from mmdeploy.media.keyframes import plan_segments
from mmdeploy.spec import preset
from tests.test_decode_exact import X264_B, write_video

SPEC = preset("synth").replace(frame_height=32, frame_width=32, n_mels=32)
LAYOUTS = [(2.0, 2.0), (2.0, 1.0), (1.3, 0.7), (3.0, 1.1)]  # (window, hop): overlapping ones straddle boundaries
FILES = {
    "h264_bframes.mp4": dict(codec="libx264", options=X264_B),
    "h264_bframes.mkv": dict(codec="libx264", options={"preset": "veryfast",
                                                       "x264-params": "bframes=5:b-pyramid=strict:keyint=30"}),
    "h264_vfr.mp4": dict(codec="libx264", options=X264_B, durations_ms=[40, 80, 120, 40, 60]),
    "vp8.webm": dict(codec="libvpx", options={"deadline": "realtime", "cpu-used": "8", "g": "30"}),
    "vp9.webm": dict(codec="libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8", "g": "30"}),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("segments")
    out = {name: write_video(root / name, seconds=12.0, **kw) for name, kw in FILES.items()}
    out["sparse.mp4"] = write_video(root / "sparse.mp4", "libx264", {"preset": "veryfast",
                                                                      "x264-params": "keyint=1000:min-keyint=1000"},
                                    seconds=12.0)
    out["noaudio.mp4"] = write_video(root / "noaudio.mp4", "libx264", X264_B, seconds=12.0, audio=False)
    for name in ("mpeg2.mpg", "mpeg2.ts"):
        out[name] = write_video(root / name, "mpeg2video", {"bf": "2", "g": "12"}, seconds=12.0)
    return out


@pytest.fixture
def short_segments(monkeypatch):
    """Segments of ~3 s (the files are 12 s): several boundaries per file."""
    monkeypatch.setattr(keyframes, "MIN_SEGMENT_SECONDS", 1.0)
    return 3.0


def same_items(split: list[dict], full: list[dict]) -> None:
    assert [x["window"] for x in split] == [x["window"] for x in full]
    for x, y in zip(split, full):
        for m in ("audio", "video"):
            assert (x[m] is None) == (y[m] is None), (m, x["window"])
            if x[m] is not None:
                assert x[m].dtype == y[m].dtype and np.array_equal(x[m], y[m]), f"{m} differs at {x['window']}"


@pytest.mark.parametrize("name", sorted(FILES) + ["noaudio.mp4"])
def test_segments_equal_the_sequential_decode(files, short_segments, name):
    path = files[name]
    for window, hop in LAYOUTS:
        plan = plan_segments(path, SPEC, window, hop, workers=2, segment_seconds=short_segments)
        assert plan.split, (name, plan.reason)
        assert all(k0 < k1 for k0, k1 in plan.segments) and plan.segments[0][0] == 0
        assert plan.segments[-1][1] == plan.windows
        full = list(pipeline.decode_windows(path, SPEC, window, hop, isolated=False))
        split = list(pipeline.decode_windows(path, SPEC, window, hop, isolated=False, plan=plan))
        assert len(full) == plan.windows
        same_items(split, full)
        if hop < window:  # windows that begin before a boundary end after it
            starts = [k0 * hop for k0, _ in plan.segments[1:]]
            assert any(w["window"]["start"] < s < w["window"]["end"] for s in starts for w in full)


def test_isolated_segments_run_at_once_and_match(files, short_segments):
    """The real path: segments in worker processes, several at once, the windows in order and unchanged."""
    path = files["h264_bframes.mp4"]
    plan = plan_segments(path, SPEC, 2.0, 1.0, workers=2, segment_seconds=short_segments)
    full = list(pipeline.decode_windows(path, SPEC, 2.0, 1.0))
    stream = pipeline.decode_windows(path, SPEC, 2.0, 1.0, plan=plan)
    split = list(stream)
    same_items(split, full)
    assert stream._running == 0 and not stream._ahead


@pytest.mark.parametrize("name, workers, expect", [
    ("sparse.mp4", 2, "keyframes too sparse"),
    ("h264_bframes.mp4", 1, "one decode worker"),
    ("mpeg2.mpg", 2, "container mpeg: seeking there is not frame-exact"),
    ("mpeg2.ts", 2, "container mpegts: seeking there is not frame-exact"),
])
def test_falls_back_to_one_pass_and_says_why(files, short_segments, name, workers, expect):
    plan = plan_segments(files[name], SPEC, 2.0, 2.0, workers=workers, segment_seconds=short_segments)
    assert not plan.split and expect in plan.reason
    assert plan.summary() == {"segments": 1, "workers": 1, "sequential": plan.reason}


def test_short_and_audio_only_files_are_one_pass(files, media_dir):
    plan = plan_segments(files["h264_bframes.mp4"], SPEC, 2.0, 2.0, workers=2)  # 12 s < two 10-s segments
    assert not plan.split and "too short" in plan.reason
    plan = plan_segments(media_dir / "espeak_en_speech.wav", SPEC, 2.0, 2.0, workers=2)
    assert not plan.split and "no video track" in plan.reason


def test_a_failing_segment_keeps_the_windows_before_it(files, short_segments):
    from mmdeploy import segments

    path = files["h264_bframes.mp4"]
    plan = plan_segments(path, SPEC, 2.0, 2.0, workers=2, segment_seconds=short_segments)
    local = segments.local_stream(path, SPEC, 2.0, 2.0, pipeline.FAST)
    bad = plan.segments[1]

    def stream(span, tracks):
        if span == bad:
            raise MediaError(path, "the decoder crashed (test)")
        return local(span, tracks)

    got, error = [], None
    try:
        for item in segments.SegmentedWindows(plan, stream, 2):
            got.append(item)
    except MediaError as exc:
        error = exc
    assert error is not None and "crashed (test)" in error.reason
    assert [x["window"]["start"] for x in got if x["video"] is not None] == \
        [k * 2.0 for k in range(*plan.segments[0])]


def test_timeline_says_how_it_was_decoded(files, short_segments, tiny_bundle, monkeypatch):
    from mmdeploy.classify import classify_timeline
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(tiny_bundle, "torch")
    monkeypatch.setattr(keyframes, "SEGMENT_SECONDS", short_segments)
    path = files["h264_vfr.mp4"]
    split = list(classify_timeline(path, predictor, window=2.0, hop=1.0, workers=2, isolated=False))
    one = list(classify_timeline(path, predictor, window=2.0, hop=1.0, workers=1, isolated=False))
    from mmdeploy.results import TimelineResult

    TimelineResult.model_validate(split[-1])
    assert split[-1]["decoding"]["segments"] > 1 and split[-1]["decoding"]["sequential"] is None
    assert one[-1]["decoding"] == {"segments": 1, "workers": 1, "sequential": "one decode worker"}
    assert [(w["start"], w["end"]) for w in split[:-1]] == [(w["start"], w["end"]) for w in one[:-1]]
    for a, b in zip(split[:-1], one[:-1]):
        same_answer(a, b)


def same_answer(a: dict, b: dict) -> None:
    """Two answers for the same window's tensors: the same labels, the probabilities within 2e-6. (Batches are
    made of whatever windows are ready, so the same window may run in batches of other sizes, whose float sums
    differ in the last bits; answers are rounded to 6 decimals, so such a bit can show as 1e-6. The tensors
    themselves are compared bit for bit elsewhere.) `probs` is a dict, or (label, p) pairs as RESULTS rows
    hold them: dict() takes both."""
    where = a.get("window") or (a.get("start"), a.get("end"))  # a RESULTS row, or a timeline's window line
    assert a["label"] == b["label"], (where, a["label"], b["label"])
    assert dict(a["probs"]) == pytest.approx(dict(b["probs"]), abs=2e-6), where
    assert set(a["per_modality"] or {}) == set(b["per_modality"] or {})
    for m, mine in (a["per_modality"] or {}).items():
        theirs = b["per_modality"][m]
        if mine is None or theirs is None:
            assert mine == theirs, (where, m)
            continue
        assert (mine["label"], mine["agrees"]) == (theirs["label"], theirs["agrees"]), (where, m)
        assert dict(mine["probs"]) == pytest.approx(dict(theirs["probs"]), abs=2e-6), (where, m)


def test_closing_stops_every_worker(files, short_segments):
    from mmdeploy import isolate

    path = files["h264_bframes.mkv"]
    plan = plan_segments(path, SPEC, 1.0, 0.5, workers=2, segment_seconds=short_segments)
    stream = pipeline.decode_windows(path, SPEC, 1.0, 0.5, plan=plan)
    next(stream)
    workers = [r.items.worker for r in stream._ahead if r.items is not None and r.items.worker is not None]
    assert workers
    stream.close()
    deadline = time.monotonic() + 10
    while any(w.process.is_alive() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(w.process.is_alive() for w in workers)
    assert stream._audio.worker is None
    isolate.shutdown()
    assert os.getpid()  # this process is fine
