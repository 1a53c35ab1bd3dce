"""classify: real clips -> modalities that match their tracks, JSON schema, timeline windows, bounded
memory, missing-modality fallback, the same tensors as training, clean errors and exit codes."""
from __future__ import annotations

import json
import os
import signal
import time
import tracemalloc
import sys
from unittest import mock
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.classify import classify_file, classify_files, classify_timeline
from mmdeploy.jobs import file_job
from mmdeploy.pipeline import expand_paths
from mmdeploy.errors import MediaError
from mmdeploy.media import probe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
NO_AUDIO = {"screencast_vp8_noaudio.webm", "bbb_h264_100subtitle_tracks_noaudio.mp4"}
AUDIO_ONLY = {"espeak_en_speech.wav"}
CLASSES = ["alpha", "beta", "gamma", "delta"]


def write_clip(path: Path, seconds: float, *, fps: int = 10, size: tuple[int, int] = (32, 32), rate: int = 16000,
               audio: bool = True, video: bool = True, faststart: bool = False, audio_codec: str = "aac") -> Path:
    """An H.264 + AAC (or PCM: fast to write) file, either track optional, with moving colour and a tone."""
    import av

    from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame

    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options={**CONTAINER_OPTIONS, **options}) as out:
        vs = as_ = None
        if video:
            vs = out.add_stream("libx264", rate=fps, options=encoder_options("libx264", {"preset": "ultrafast"}))
            vs.width, vs.height = size
            vs.pix_fmt = "yuv420p"
        if audio:
            as_ = out.add_stream(audio_codec, rate=rate, layout="mono", options=encoder_options(audio_codec))
        if vs is not None:
            for i in range(int(seconds * fps)):
                img = np.zeros((size[1], size[0], 3), np.uint8)
                img[..., i % 3] = (i * 7) % 256
                img[: (i % size[1]) + 1, :, 1] = 200
                frame = video_frame(img)
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if as_ is not None:
            chunk = 1024
            total = int(seconds * rate)
            for start in range(0, total, chunk):
                t = np.arange(start, min(start + chunk, total)) / rate
                samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
                if audio_codec == "pcm_s16le":
                    samples = (samples * 32767).astype(np.int16)
                frame = av.AudioFrame.from_ndarray(samples, format="flt" if samples.dtype == np.float32 else "s16",
                                                   layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
                out.mux(as_.encode(frame))
            out.mux(as_.encode(None))
    return path


@pytest.fixture(scope="module")
def predictor(tiny_bundle):
    from mmdeploy.runtime import load_predictor

    return load_predictor(tiny_bundle, "torch")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clips")
    return {"av": write_clip(root / "av.mp4", 3.0),
            "audio": write_clip(root / "audio_only.mp4", 3.0, video=False),
            "video": write_clip(root / "video_only.mp4", 3.0, audio=False),
            "long": write_clip(root / "seven.mp4", 7.0)}


def check_schema(result: dict, classes: list[str]) -> None:
    keys = {"file", "window", "label", "score", "probs", "top_k", "modalities", "per_modality", "backend",
            "timings_ms"}
    assert keys <= set(result), set(result) ^ keys
    assert 0 <= result["window"]["start"] < result["window"]["end"]
    assert list(result["probs"]) == classes and result["label"] in classes
    assert sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["score"] == max(result["probs"].values()) == result["probs"][result["label"]]
    assert [t["score"] for t in result["top_k"]] == sorted((t["score"] for t in result["top_k"]), reverse=True)
    assert result["top_k"][0]["label"] == result["label"]
    assert set(result["per_modality"]) == set(result["modalities"]) and result["modalities"]
    for head in result["per_modality"].values():
        assert head["label"] in classes and head["agrees"] == (head["label"] == result["label"])
        assert sum(head["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(result["timings_ms"]) == {"decode", "features", "infer"}
    assert all(v >= 0 for v in result["timings_ms"].values())
    json.dumps(result)


# ---- real clips --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media_results(media_dir, predictor) -> dict[str, dict]:
    """Every clip in ../shared/media, classified in one call (in this process: fast on 2 shared cores)."""
    paths, errors = expand_paths([str(media_dir)])
    assert not errors and len(paths) >= 14
    return {Path(r["file"]).name: r for r in classify_files(paths, predictor, workers=1)}


def test_every_real_clip_reports_its_tracks(media_dir, media_results, predictor):
    names = sorted(p.name for p in media_dir.iterdir() if p.suffix != ".md")
    assert sorted(media_results) == names
    for name, result in media_results.items():
        assert "error" not in result, (name, result)
        expected = ["video"] if name in NO_AUDIO else ["audio"] if name in AUDIO_ONLY else ["audio", "video"]
        assert result["modalities"] == expected, name
        check_schema(result, list(predictor.classes))
        assert result["backend"] == predictor.backend


def test_worker_processes_equal_in_process(media_dir, media_results, predictor, clips):
    """Decode + features in two worker processes give the same answers; batches mix modalities."""
    paths = [media_dir / "espeak_en_speech.wav", media_dir / "screencast_vp8_noaudio.webm", clips["av"]]
    results = {r["file"]: r for r in classify_files(paths, predictor, workers=2, batch_size=3)}
    assert sorted(results) == sorted(map(str, paths))
    for path in paths:
        alone = media_results.get(path.name) or classify_file(path, predictor)
        assert results[str(path)]["probs"] == pytest.approx(alone["probs"], abs=1e-5)
        assert results[str(path)]["modalities"] == alone["modalities"]


def crash_on_named_file(path: str, spec):
    """Worker job that kills its process with SIGSEGV for files named *crash*, as a decoder segfault does."""
    if "crash" in Path(path).name:
        os.kill(os.getpid(), signal.SIGSEGV)
    return file_job(path, spec)


def sleep_on_named_file(path: str, spec):
    """Worker job that hangs for files named *hang*."""
    if "hang" in Path(path).name:
        time.sleep(60)
    return file_job(path, spec)


def test_worker_crash_costs_only_its_file(clips, predictor, tmp_path):
    crash = tmp_path / "crash.mp4"
    crash.write_bytes(clips["av"].read_bytes())
    paths = [clips["av"], crash, clips["audio"], clips["video"], clips["long"]]
    results = {Path(r["file"]).name: r for r in classify_files(paths, predictor, workers=2,
                                                               job=crash_on_named_file)}
    assert len(results) == len(paths)
    assert "the decoder crashed (signal 11, SIGSEGV)" in results.pop("crash.mp4")["error"]
    assert all("error" not in r for r in results.values())


def test_worker_hang_costs_only_its_file(clips, predictor, tmp_path):
    hang = tmp_path / "hang.mp4"
    hang.write_bytes(clips["av"].read_bytes())
    paths = [hang, clips["av"], clips["audio"]]
    t0 = time.monotonic()
    results = {Path(r["file"]).name: r for r in classify_files(paths, predictor, workers=2, timeout=3,
                                                               job=sleep_on_named_file)}
    assert time.monotonic() - t0 < 30
    assert results.pop("hang.mp4")["error"].startswith("decoding took longer than 3 s")
    assert sorted(results) == ["audio_only.mp4", "av.mp4"] and all("error" not in r for r in results.values())


def test_silent_audio_track_is_still_audio(media_results):
    assert "audio" in media_results["vp9_opus_no_duration.webm"]["modalities"]


# ---- missing modality ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind, present, absent", [("audio", "audio", "video"), ("video", "video", "audio")])
def test_one_track_uses_that_head(clips, predictor, kind, present, absent):
    result = classify_file(clips[kind], predictor)
    assert result["modalities"] == [present] and set(result["per_modality"]) == {present}
    assert result["probs"] == result["per_modality"][present]["probs"]
    job = file_job(str(clips[kind]), predictor.spec)
    assert job[absent] is None
    zeros = {"audio": np.zeros((1, 1, *predictor.spec.spectrogram_shape), np.float32),
             "video": np.zeros((1, *predictor.spec.frames_shape), np.float32)}
    inputs = {**zeros, present: job[present][None]}
    expected = predictor.predict(inputs["audio"], inputs["video"])[present][0]
    assert list(result["probs"].values()) == pytest.approx(expected.tolist(), abs=1e-6)


def test_both_tracks_use_fused_head_and_attribute(clips, predictor):
    result = classify_file(clips["av"], predictor)
    job = file_job(str(clips["av"]), predictor.spec)
    probs = predictor.predict(job["audio"][None], job["video"][None])
    assert list(result["probs"].values()) == pytest.approx(probs["fused"][0].tolist(), abs=1e-6)
    for m in ("audio", "video"):
        assert list(result["per_modality"][m]["probs"].values()) == pytest.approx(probs[m][0].tolist(), abs=1e-6)
    check_schema(result, CLASSES)


# ---- train/serve skew ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["av", "audio"])
def test_features_equal_training_features(clips, predictor, tmp_path, kind):
    """classify's tensors for a file (numpy_features, in the decode worker) == the tensors training reads
    for it from the feature cache (torch's features, stored as .npy, read back), within the one stated
    tolerance: frames bit-identical, spectrograms to numpy_features.TOLERANCE."""
    from mmdeploy.numpy_features import TOLERANCE

    from mmdeploy.data.cache import FeatureCache
    from mmdeploy.data.manifest import Item

    cache = FeatureCache(tmp_path, predictor.spec)
    item = Item(str(clips[kind]), "alpha", "train")
    cache.get(item)
    assert cache.has(item)
    audio, video = cache.get(item)
    job = file_job(str(clips[kind]), predictor.spec)
    assert np.abs(job["audio"] - audio.numpy()).max() <= TOLERANCE["audio"]
    assert (job["video"] is None) == (video is None) == (kind == "audio")
    if video is not None:
        assert np.array_equal(job["video"], video.numpy())


# ---- timeline -----------------------------------------------------------------------------------
def test_timeline_windows_and_timestamps(clips, predictor):
    rows = list(classify_timeline(clips["long"], predictor, window=2.0, hop=1.0))
    *windows, summary = rows
    duration = probe(clips["long"]).duration
    assert duration == pytest.approx(7.0, abs=0.1)
    # windows start every hop; the 1-s tail window is kept (it holds half a window), cut at the end
    assert [w["start"] for w in windows] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [w["end"] for w in windows] == pytest.approx([min(w["start"] + 2.0, duration) for w in windows])
    assert summary["windows"] == [{k: w[k] for k in ("start", "end", "label", "score")} for w in windows]
    mean = np.mean([list(w["probs"].values()) for w in windows], axis=0)
    assert list(summary["probs"].values()) == pytest.approx(mean.tolist(), abs=2e-6)
    check_schema(summary, CLASSES)


def test_timeline_window_equals_single_window(clips, predictor):
    first = next(iter(classify_timeline(clips["long"], predictor)))
    assert (first["start"], first["end"]) == (0.0, predictor.spec.window_seconds)
    alone = classify_file(clips["long"], predictor)
    assert list(first["probs"].values()) == pytest.approx(list(alone["probs"].values()), abs=1e-5)


@pytest.mark.slow
def test_timeline_memory_is_bounded(tmp_path, predictor):
    """Streaming 10 minutes allocates no more (traced Python + numpy memory, peak) than streaming 1 minute;
    holding the decoded 10-minute file would take ~35 MB of RGB frames plus ~38 MB of audio. (tracemalloc,
    not RSS: glibc keeps freed heap, so RSS plateaus at an allocator-dependent level.) Both files are decoded by
    segments (mmdeploy/segments.py): what may be held ahead is at most `workers + 1` segments of windows plus
    the one being consumed, whatever the file's length, so the 10-minute peak may exceed the 1-minute one
    (2 segments) by at most that many windows' features (timing decides how full the buffers get)."""
    import math

    from mmdeploy.media.keyframes import SEGMENT_SECONDS
    from mmdeploy.pipeline import timeline_workers

    spec = predictor.spec
    window_mb = 4 * (math.prod(spec.frames_shape) + math.prod(spec.spectrogram_shape)) / 2**20
    held = (timeline_workers() + 2) * math.ceil(SEGMENT_SECONDS / 5.0)
    peaks = {}
    for minutes in (1, 10):
        clip = write_clip(tmp_path / f"{minutes}min.mov", 60.0 * minutes, fps=1, size=(160, 120),
                          audio_codec="pcm_s16le")
        tracemalloc.start()
        try:
            rows = sum(1 for _ in classify_timeline(clip, predictor, window=5.0, hop=5.0))
            peaks[minutes] = tracemalloc.get_traced_memory()[1] / 2**20
        finally:
            tracemalloc.stop()
        assert rows == 12 * minutes + 1  # windows, then the summary
    assert peaks[10] < peaks[1] + 2 + held * window_mb, (peaks, held, window_mb)
    assert peaks[10] < 10, peaks  # the whole decoded file would be ~73 MB


# ---- which files, errors ------------------------------------------------------------------------
def test_expand_paths(tmp_path, clips):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.MP4").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    (tmp_path / "empty").mkdir()
    files, errors = expand_paths([str(tmp_path / "a"), str(clips["av"]), str(clips["av"]),
                                  str(tmp_path / "empty"), str(tmp_path / "nope.mp4"), str(tmp_path / "*.zzz")])
    assert files == [tmp_path / "a" / "b" / "x.MP4", clips["av"]]
    assert [e.reason.split(" (")[0] for e in errors] == ["folder has no media files", "no such file or folder",
                                                         "no file matches this pattern"]
    files, _ = expand_paths([str(clips["av"].parent / "*.mp4")], limit=2)
    assert files == sorted(clips["av"].parent.glob("*.mp4"))[:2]


def data_only(path: Path) -> Path:
    """An MPEG-TS file whose one stream is data: a real container with neither audio nor video."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_data_stream()
        for i in range(10):
            packet = av.Packet(b"payload %d" % i)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 10)
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def broken(tmp_path_factory, clips) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    (root / "empty.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_text("this is not a video\n" * 50)
    out = {"empty": root / "empty.mp4", "garbage": root / "garbage.mp4", "no_tracks": data_only(root / "data.ts")}
    for name, faststart in (("cut_index_at_end", False), ("cut_faststart", True)):
        whole = write_clip(root / f"{name}_whole.mp4", 5.0, faststart=faststart)
        data = whole.read_bytes()
        out[name] = root / f"{name}.mp4"
        out[name].write_bytes(data[: int(len(data) * 0.6)])
    return out


@pytest.mark.parametrize("name, reason", [("empty", "empty"), ("garbage", "not a readable media file"),
                                          ("cut_index_at_end", "not a readable media file"),
                                          ("no_tracks", "no audio or video track")])
def test_bad_file_raises_media_error(broken, predictor, name, reason):
    with pytest.raises(MediaError) as info:
        classify_file(broken[name], predictor)
    assert info.value.path == str(broken[name]) and "\n" not in str(info.value) and reason in info.value.reason


def test_truncated_faststart_is_result_or_clean_error(broken, predictor):
    """moov at the front, data cut at 60%: the first window may still decode; never a crash."""
    try:
        check_schema(classify_file(broken["cut_faststart"], predictor), CLASSES)
    except MediaError as exc:
        assert exc.path == str(broken["cut_faststart"])


def test_timeline_failure_mid_stream_keeps_earlier_windows(clips, predictor, monkeypatch):
    """A decoder failure after some windows: those windows come out, then the error (never a hang)."""
    import mmdeploy.media

    real = mmdeploy.media.iter_windows

    def two_then_fail(*args, **kwargs):
        windows = real(*args, **kwargs)
        yield next(windows)
        yield next(windows)
        raise MediaError(args[0], "damaged packet at 4.0s")

    monkeypatch.setattr(mmdeploy.media, "iter_windows", two_then_fail)  # here: not in a worker process
    rows = classify_timeline(clips["long"], predictor, window=2.0, hop=2.0, batch_size=1, isolated=False)
    assert [next(rows)["start"], next(rows)["start"]] == [0.0, 2.0]
    with pytest.raises(MediaError, match="damaged packet"):
        next(rows)


def test_timeline_bad_file_raises_media_error(broken, predictor):
    with pytest.raises(MediaError):
        list(classify_timeline(broken["garbage"], predictor))


# ---- CLI (in this process: no second torch import) -----------------------------------------------
def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `mmdeploy classify ARGS` through the real entry point; (exit code, stdout, stderr)."""
    from mmdeploy.cli import main

    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["mmdeploy", "classify", *args]), pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


def test_cli_json_all_good_exit_0(capsys, clips, tiny_bundle):
    code, out, err = cli(capsys, str(clips["av"]), str(clips["audio"]), "--model", str(tiny_bundle), "--json",
                         "--top-k", "2", "--backend", "torch")
    assert code == 0, err
    results = {Path(r["file"]).name: r for r in map(json.loads, out.splitlines())}
    assert set(results) == {"av.mp4", "audio_only.mp4"} and results["audio_only.mp4"]["modalities"] == ["audio"]
    for r in results.values():
        check_schema(r, CLASSES)
        assert len(r["top_k"]) == 2 and r["backend"] == "torch-cpu"


def test_cli_mixed_good_and_bad_exit_2(capsys, clips, broken, tiny_bundle, tmp_path):
    bad = [broken["empty"], broken["garbage"], broken["no_tracks"], tmp_path / "missing.mp4", tmp_path]
    code, out, err = cli(capsys, str(clips["video"]), *map(str, bad), "--model", str(tiny_bundle), "--json",
                         "--workers", "2")
    assert code == 2
    rows = list(map(json.loads, out.splitlines()))
    (good,) = [r for r in rows if "error" not in r]
    assert good["modalities"] == ["video"]
    failed = [r for r in rows if "error" in r]
    assert sorted(r["file"] for r in failed) == sorted(map(str, bad))  # every input once on stdout
    assert all(set(r) == {"file", "error"} and r["error"] for r in failed)
    lines = err.splitlines()
    assert "Traceback" not in err and len(lines) == len(bad)
    for path in bad:
        assert sum(line.startswith(f"error: {path}: ") for line in lines) == 1, (path, lines)


def test_cli_all_bad_exit_2(capsys, broken, tiny_bundle):
    code, out, err = cli(capsys, str(broken["garbage"]), "--model", str(tiny_bundle))
    assert (code, out) == (2, "") and err.startswith(f"error: {broken['garbage']}: ") and err.count("\n") == 1


def test_cli_timeline_streams_windows_then_summary(capsys, clips, tiny_bundle):
    code, out, err = cli(capsys, str(clips["long"]), "--model", str(tiny_bundle), "--json", "--window", "2",
                         "--hop", "2")
    assert code == 0, err
    *windows, summary = map(json.loads, out.splitlines())
    assert [w["start"] for w in windows] == [0.0, 2.0, 4.0, 6.0] == [w["start"] for w in summary["windows"]]
    assert summary["modalities"] == ["audio", "video"] and len(summary["windows"]) == 4


def test_cli_text_output(capsys, clips, tiny_bundle):
    code, out, err = cli(capsys, str(clips["av"]), "--model", str(tiny_bundle), "--top-k", "3")
    assert code == 0, err
    first, top, *heads, timings = out.splitlines()
    assert first.startswith(f"{clips['av']}: ") and "[audio+video, " in first
    assert top.startswith("  top: ") and top.count(",") == 2
    assert [h.split(":")[0].strip() for h in heads] == ["audio", "video"] and timings.startswith("  ms: decode")


def test_cli_limit(capsys, clips, tiny_bundle):
    code, out, _ = cli(capsys, str(clips["av"].parent), "--model", str(tiny_bundle), "--json", "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 2


def test_cli_without_model_says_how_to_make_one(capsys, clips, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, str(clips["av"]))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: runs: no model bundle found") and "mmdeploy train" in err


def test_cli_window_note_and_window_field(capsys, clips, tiny_bundle, predictor):
    trained = predictor.spec.window_seconds
    code, out, err = cli(capsys, str(clips["long"]), "--model", str(tiny_bundle), "--json", "--window",
                         str(trained + 1), "--hop", "3")
    assert code == 0 and err.count("\n") == 1 and err.startswith(f"note: --window {trained + 1:g}s differs")
    summary = json.loads(out.splitlines()[-1])
    assert summary["window"] == {"start": 0.0, "end": summary["windows"][-1]["end"]}
    code, out, err = cli(capsys, str(clips["long"]), "--model", str(tiny_bundle), "--json", "--window",
                         str(trained))
    assert code == 0 and err == ""
    code, out, _ = cli(capsys, str(clips["long"]), "--model", str(tiny_bundle))
    assert f"window 0.00-{trained:.2f}s" in out.splitlines()[0]


def test_window_field_says_what_was_classified(clips, predictor, tmp_path):
    """A 7-s file without --window: its first model window, not the whole file; a clip shorter than the
    window: all of it."""
    assert classify_file(clips["long"], predictor)["window"] == {"start": 0.0, "end": predictor.spec.window_seconds}
    short = write_clip(tmp_path / "short.mp4", predictor.spec.window_seconds / 2)
    assert classify_file(short, predictor)["window"] == pytest.approx(
        {"start": 0.0, "end": predictor.spec.window_seconds / 2}, abs=0.05)


# ---- untrusted files: errors from inside PyAV, decoder crashes, hangs ---------------------------------
@pytest.mark.parametrize("call", ["probe", "decode_window", "iter_windows"])
def test_any_exception_from_pyav_becomes_media_error(clips, predictor, monkeypatch, call):
    """The issue's IndexError from av/container/streams.py (reached from mmdeploy/media) leaves every public
    media function as MediaError naming the file, never as a traceback."""
    import mmdeploy.media as media

    def broken(container, kind):
        raise IndexError("list index out of range")

    monkeypatch.setattr(media.source, "pick", broken)
    fn = {"probe": lambda p: media.probe(p), "decode_window": lambda p: media.decode_window(p, predictor.spec),
          "iter_windows": lambda p: list(media.iter_windows(p, predictor.spec))}[call]
    with pytest.raises(MediaError) as info:
        fn(clips["av"])
    assert info.value.path == str(clips["av"]) and "IndexError: list index out of range" in info.value.reason


@pytest.fixture(scope="module")
def segfault_file(tmp_path_factory) -> Path:
    """A file that really crashes FFmpeg (SIGSEGV) when decoded: the issue's recipe, seeded."""
    import runpy

    fuzz = runpy.run_path(str(REPO / "benchmarks" / "fuzz_corpus.py"))
    return fuzz["crash_file"](tmp_path_factory.mktemp("crash") / "bbb_flipped.mp4")


def crashed(reason: str) -> bool:
    return reason.startswith("the decoder crashed (signal 11, SIGSEGV)")


def test_real_decoder_segfault_costs_only_that_file(segfault_file, clips, predictor):
    with pytest.raises(MediaError) as info:
        classify_file(segfault_file, predictor)
    assert info.value.path == str(segfault_file) and crashed(info.value.reason)
    with pytest.raises(MediaError) as info:
        list(classify_timeline(segfault_file, predictor))
    assert crashed(info.value.reason)
    check_schema(classify_file(clips["av"], predictor), CLASSES)  # a fresh worker for the next file
    results = {Path(r["file"]).name: r for r in classify_files([segfault_file, clips["av"]], predictor, workers=2)}
    assert crashed(results[segfault_file.name]["error"]) and "error" not in results["av.mp4"]


def test_cli_single_file_segfault_is_one_line_exit_2(capsys, segfault_file, tiny_bundle):
    code, out, err = cli(capsys, str(segfault_file), "--model", str(tiny_bundle), "--json")
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {segfault_file}: the decoder crashed")
    assert [json.loads(line) for line in out.splitlines()] == [{"file": str(segfault_file),
                                                                 "error": err.split(": ", 2)[2].strip()}]


def test_isolated_windows_close_kills_the_worker(clips, predictor):
    from mmdeploy.isolate import iter_isolated

    windows = iter_isolated(clips["long"], predictor.spec, window=1.0)
    assert next(windows)["window"]["start"] == 0.0
    process = windows.worker.process
    windows.close()
    assert not process.is_alive() and list(windows) == []


def test_isolated_decode_equals_in_process(clips, predictor):
    from mmdeploy.isolate import decode_isolated

    job, here = decode_isolated(clips["av"], predictor.spec), file_job(str(clips["av"]), predictor.spec)
    assert np.array_equal(job["audio"], here["audio"]) and np.array_equal(job["video"], here["video"])
    assert job["window"] == here["window"] == {"start": 0.0, "end": predictor.spec.window_seconds}
