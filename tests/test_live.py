"""Live sources: windows from a stream as it arrives (mmdeploy/media/livewindows.py, media/live.py), the session
that classifies them, drops what it cannot keep up with and reconnects (mmdeploy/live.py), detections, and
`mmdeploy watch` on real streams that `ffmpeg -re` publishes on 127.0.0.1 (UDP, HTTP, HLS, stdin): the same
windows as `mmdeploy classify FILE --window W --hop H`, clear lines for a stalled or killed source."""
from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.errors import ConfigError
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.live import Backlog, Latencies, LiveSession, PipeFeed, backoff
from mmdeploy.media.live import ENDED, LiveSource
from mmdeploy.media.livewindows import LAG, LiveWindows
from tests.servers import free_port, process_group

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FFMPEG = shutil.which("ffmpeg")
needs_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg CLI publishes the test streams: "
                                                         "`make tools` installs Debian's (apt-get install ffmpeg)")
CLI = [sys.executable, "-m", "mmdeploy"]


# ---- the window assembler -------------------------------------------------------------------------------
def frame_at(value: int):
    import av

    return av.VideoFrame.from_ndarray(np.full((8, 8, 3), value % 256, np.uint8), format="rgb24")


def feed(windows: LiveWindows, seconds: float, audio=(0.0, None), video=(0.0, None), fps: int = 25,
         chunk: float = 0.05) -> list:
    """Audio in `chunk`-s pieces and frames at `fps`, each within its (from, to) span, in time order; the
    windows as they complete, with the stream time at which each did."""
    events = []
    if windows.has_audio:
        a0, a1 = audio[0], audio[1] if audio[1] is not None else seconds
        events += [(t, "a") for t in np.arange(a0, a1 - 1e-9, chunk)]
    if windows.has_video:
        v0, v1 = video[0], video[1] if video[1] is not None else seconds
        events += [(t, "v") for t in np.arange(v0, v1 - 1e-9, 1 / fps)]
    out = []
    for t, kind in sorted(events):
        if kind == "a":
            windows.audio(float(t), np.full(int(round(chunk * windows.rate)), 0.1, np.float32))
        else:
            windows.frame(float(t), frame_at(int(t * fps)))
        out += [(c, float(t)) for c in windows.ready()]
    return out


@pytest.fixture
def live_spec(tiny_spec):
    return tiny_spec  # 2-s windows, 4 frames, 16 kHz


def test_windows_come_in_order_as_they_complete(live_spec):
    out = feed(LiveWindows("s", live_spec, 2.0, 1.0, True, True), 6.0)
    assert [c.start for c, _ in out] == [0.0, 1.0, 2.0, 3.0, 4.0]
    for clip, at in out:
        assert clip.audio.shape == (32000,) and clip.frames.shape == (4, 8, 8, 3)
        assert at - (clip.start + 2.0) < 0.1  # completed as the window's last sample arrived
        np.testing.assert_allclose(clip.frame_times, clip.start + np.array([0.24, 0.72, 1.24, 1.72]), atol=1e-9)


def test_audio_only_windows_until_video_arrives(live_spec):
    out = feed(LiveWindows("s", live_spec, 2.0, 1.0, True, True), 8.0, video=(3.2, None))
    kinds = {c.start: (c.has_audio, c.has_video) for c, _ in out}
    assert kinds[0.0] == kinds[1.0] == (True, False)
    assert kinds[2.0] == (True, False)  # its first target (2.25 s) is 0.95 s before the first frame
    assert kinds[3.0] == kinds[4.0] == (True, True)
    for clip, at in out:
        if not clip.has_video:  # decided once audio was LAG past the window's end, not held longer
            assert at <= clip.start + 2.0 + LAG + 0.1


def test_video_that_stops_gives_audio_only_windows_and_the_reverse(live_spec):
    out = feed(LiveWindows("s", live_spec, 2.0, 1.0, True, True), 10.0, video=(0.0, 4.0))
    kinds = {c.start: c.has_video for c, _ in out}
    assert kinds[0.0] and kinds[1.0] and kinds[2.0]
    assert not kinds[5.0] and not kinds[6.0]  # the last frame (3.96 s) is over HOLD_LAST old
    assert all(c.has_audio for c, _ in out) and len(out) >= 7
    out = feed(LiveWindows("s", live_spec, 2.0, 1.0, True, True), 10.0, audio=(0.0, 4.0))
    kinds = {c.start: c.has_audio for c, _ in out}
    assert kinds[0.0] and kinds[2.0] and not kinds[5.0] and all(c.has_video for c, _ in out)


def test_single_track_streams(live_spec):
    audio_only = feed(LiveWindows("s", live_spec, 2.0, 1.0, True, False), 5.0)
    assert [c.start for c, _ in audio_only] == [0.0, 1.0, 2.0, 3.0]
    assert all(c.has_audio and not c.has_video for c, _ in audio_only)
    video_only = feed(LiveWindows("s", live_spec, 2.0, 1.0, False, True), 5.0)
    assert [c.start for c, _ in video_only] == [0.0, 1.0, 2.0, 3.0]
    assert all(c.has_video and not c.has_audio for c, _ in video_only)


def test_memory_stays_flat_over_an_hour_of_stream(live_spec):
    windows = LiveWindows("s", live_spec, 2.0, 1.0, True, True)
    sizes = []
    for minute in range(60):
        for step in range(600):
            t = minute * 60 + step * 0.1
            windows.audio(t, np.zeros(1600, np.float32))
            windows.frame(t, frame_at(step))
            windows.ready()
        sizes.append((len(windows.buf), len(windows.picked)))
    assert windows.next == 3599  # [3598, 3600) was the last complete window
    assert max(sizes) == sizes[0] or max(s[0] for s in sizes) <= 2 * sizes[0][0]
    assert max(s[1] for s in sizes) <= 16


# ---- the session's pure parts ------------------------------------------------------------------------
def test_backlog_drops_the_oldest_and_the_stale():
    backlog = Backlog(depth=3, max_wait_s=1.0, batch=2)
    items = [{"arrival": float(i)} for i in range(5)]
    dropped = [d for it in items for d in backlog.offer(it)]
    assert [d["arrival"] for d in dropped] == [0.0, 1.0]  # only 3 may wait
    ready, stale = backlog.take(now=3.5)
    assert [d["arrival"] for d in stale] == [2.0] and [d["arrival"] for d in ready] == [3.0, 4.0]
    assert len(backlog) == 0 and backlog.take(10.0) == ([], [])


def test_latency_percentiles_in_fixed_memory():
    lat = Latencies()
    for ms in range(1, 1001):
        lat.add(float(ms))
    assert lat.summary() == {"p50": 500.0, "p99": 990.0, "max": 1000.0}
    lat.add(1e9)  # beyond the histogram: counted in its last bin, the max is exact
    assert lat.summary()["max"] == 1e9 and lat.counts.nbytes < 1 << 20
    assert Latencies().summary() == {"p50": None, "p99": None, "max": None}


def test_backoff_doubles_up_to_a_limit():
    assert [backoff(i) for i in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


class SlowPredictor:
    """The tiny model, but each model call takes `seconds`: slower than real time."""

    def __init__(self, predictor, seconds: float):
        self.inner, self.seconds = predictor, seconds
        self.spec, self.classes, self.backend = predictor.spec, predictor.classes, predictor.backend

    def predict(self, audio, video):
        time.sleep(self.seconds)
        return self.inner.predict(audio, video)


def fake_stream(spec, hop: float, count: int, every_s: float):
    """A decode stream that yields `count` windows `every_s` apart (as a live source would), then ends."""
    def decode(source, spec_, window, hop_, open_s, read_s, options):
        def items():
            yield {"note": "opened"}
            for k in range(count):
                time.sleep(every_s)
                yield {"file": source.name, "audio": np.zeros((1, *spec.spectrogram_shape), np.float32),
                       "video": np.zeros(spec.frames_shape, np.float32),
                       "window": {"start": k * hop, "end": k * hop + window},
                       "timings_ms": {"decode": 1.0, "features": 1.0}, "arrival": time.monotonic()}
            from mmdeploy.errors import MediaError
            raise MediaError(source.name, ENDED)
        return items()
    return decode


def test_a_model_slower_than_real_time_drops_windows_and_says_so(tiny_bundle):
    from mmdeploy.runtime import load_predictor

    predictor = SlowPredictor(load_predictor(tiny_bundle, "torch"), 0.25)
    source = LiveSource("fake", "fake", pipe=True)
    session = LiveSession(source, predictor, 2.0, 0.05, decode=fake_stream(predictor.spec, 0.05, 40, 0.05),
                          max_wait_s=0.1, batch=1)
    lines = list(session.run())
    windows = [x for x in lines if "probs" in x]
    drops = [x for x in lines if x.get("event") == "dropped"]
    summary = session.summary()["summary"]
    assert summary["windows"] == len(windows) and summary["dropped"] == len(drops) > 10
    assert summary["windows"] + summary["dropped"] == 40
    assert max(w["latency_ms"] for w in windows) < 1000  # bounded: never a growing queue
    assert windows[-1]["dropped"] <= summary["dropped"]
    assert lines[-1]["event"] == "ended" and not lines[-1]["failed"]


def test_pipe_feed_reaches_a_reader_and_ends_it(tmp_path):
    feed_ = PipeFeed("test")
    fd = os.open(feed_.path, os.O_RDONLY | os.O_NONBLOCK)
    assert feed_.write(b"x" * 100_000) and feed_.write(b"y")
    feed_.close()
    got, deadline = b"", time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            time.sleep(0.01)
            continue
        if not chunk:
            break
        got += chunk
    os.close(fd)
    assert got == b"x" * 100_000 + b"y"
    feed_.thread.join(5)
    assert not os.path.exists(feed_.folder) and not feed_.write(b"z")


# ---- detections ----------------------------------------------------------------------------------------
def test_rules_fire_on_the_rising_edge(tmp_path):
    from mmdeploy.detections import Detector, parse_rule

    classes = ["alpha", "beta"]
    with pytest.raises(ConfigError, match="no class 'gamma'"):
        parse_rule("gamma:0.5", classes)
    with pytest.raises(ConfigError, match="LABEL:THRESHOLD"):
        parse_rule("alpha", classes)
    with pytest.raises(ConfigError, match="LABEL:THRESHOLD"):
        parse_rule("alpha:1.5", classes)
    out = tmp_path / "fired.jsonl"
    said = []
    detector = Detector([parse_rule("alpha:0.6", classes)], f"sh -c 'cat >> {out}; echo >> {out}'",
                        say=said.append)
    lines = [{"source": "s", "start": float(k), "end": k + 2.0, "probs": {"alpha": p, "beta": 1 - p}}
             for k, p in enumerate([0.1, 0.7, 0.8, 0.2, 0.9])]
    fired = []
    for line in lines:
        fired += detector.check(line)
        for t in detector.running.values():
            t.join(10)
    assert [f["start"] for f in fired] == [1.0, 4.0]
    assert [json.loads(x)["start"] for x in out.read_text().splitlines() if x] == [1.0, 4.0]
    assert said and all("exited 0" in s["message"] for s in said)


# ---- real streams through `mmdeploy watch` --------------------------------------------------------------
def make_clip(path: Path, seconds: float, audio: bool = True, video: bool = True) -> Path:
    """H.264 (GOP 25) + AAC in MPEG-TS from FFmpeg's test sources: what a broadcast carries."""
    args = [FFMPEG, "-hide_banner", "-loglevel", "error", "-y"]
    if video:
        args += ["-f", "lavfi", "-i", f"testsrc2=size=96x72:rate=25:duration={seconds}"]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=330:beep_factor=4:sample_rate=16000:duration={seconds}"]
    if video:
        args += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "aac", "-b:a", "48k"]
    subprocess.run(args + ["-f", "mpegts", str(path)], check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    if FFMPEG is None:
        pytest.skip("ffmpeg CLI missing (make tools)")
    return make_clip(tmp_path_factory.mktemp("live") / "clip.ts", 6.0)


process = process_group  # a child in its own process group, SIGKILLed (the whole group) on the way out


def publish(clip: Path, url: str, *extra: str, stdout=None):
    return process([FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy",
                    "-f", "mpegts", *extra, url], stdout=stdout, stderr=subprocess.DEVNULL)


def watch(model: Path, source: str, *extra: str, stdin=None):
    # faulthandler: a crash (a native abort at exit included) prints every thread's stack into the failure
    return process([*CLI, "watch", source, "--model", str(model), "--hop", "1", "--json", *extra],
                   stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                   env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def wait_udp_bound(port: int, proc, deadline_s: float = 60) -> None:
    """Until something listens on UDP `port` (the watcher's decode worker opened it)."""
    deadline = time.monotonic() + deadline_s
    needle = f":{port:04X} "
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"watch exited early: {proc.stderr.read()}")
        if any(needle in line.split("0.0.0.0")[0] or needle in line for line in
               Path("/proc/net/udp").read_text().splitlines()[1:]):
            return
        time.sleep(0.1)
    pytest.fail(f"nothing listened on udp port {port} within {deadline_s} s")


def lines_of(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.strip()]


def finish(proc, timeout: float = 60) -> tuple[list[dict], str]:
    out, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return lines_of(out), err


@pytest.mark.slow
@needs_ffmpeg
def test_a_file_streamed_live_gives_the_files_windows(tiny_bundle, clip):
    """ffmpeg -re -i FILE -f mpegts udp://... gives, window for window, what `mmdeploy classify FILE
    --window 2 --hop 1` gives on the file (the same labels; the same probabilities)."""
    port = free_port()
    with watch(tiny_bundle, f"udp://127.0.0.1:{port}", "--read-timeout", "2", "--reconnects", "0") as proc:
        wait_udp_bound(port, proc)
        with publish(clip, f"udp://127.0.0.1:{port}?pkt_size=1316") as pub:
            files = subprocess.run([*CLI, "classify", str(clip), "--model", str(tiny_bundle), "--window", "2",
                                    "--hop", "1", "--json"], capture_output=True, text=True, timeout=120)
            pub.wait(30)
        live, err = finish(proc)
    assert files.returncode == 0, files.stderr
    from_file = {(w["start"], w["end"]): w for w in lines_of(files.stdout) if "probs" in w and "windows" not in w}
    windows = [x for x in live if "probs" in x]
    both = [w for w in windows if (w["start"], w["end"]) in from_file]
    assert len(both) == len(windows) >= 3, (windows, err)  # every live window is one of the file's
    for w in both:
        f = from_file[(w["start"], w["end"])]
        assert w["label"] == f["label"]
        assert w["probs"] == pytest.approx(f["probs"], abs=1e-5)
        assert w["modalities"] == ["audio", "video"] and w["latency_ms"] >= 0
    summary = live[-1]["summary"]
    assert summary["windows"] == len(windows) and summary["dropped"] == 0
    assert "video starts at the first keyframe" in err and "no data for 2 s" in err
    assert proc.returncode == 2  # the source stopped and --reconnects 0: said, exit 2


@pytest.mark.slow
@needs_ffmpeg
def test_stdin_ends_the_stream_and_a_detection_runs_a_command(tiny_bundle, clip, tmp_path):
    """stdin: the end of the pipe is the end of the stream (exit 0); --on/--exec runs a command."""
    fired = tmp_path / "fired.json"
    with publish(clip, "-", stdout=subprocess.PIPE) as pub, \
            watch(tiny_bundle, "-", "--on", "alpha:0.0001", "--exec", f"sh -c 'cat > {fired}'",
                  stdin=pub.stdout) as proc:
        pub.stdout.close()
        lines, err = finish(proc)
    assert proc.returncode == 0, err
    windows = [x for x in lines if "probs" in x]
    assert [w["start"] for w in windows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert {"source", "start", "end", "wall", "latency_ms", "label", "per_modality", "dropped"} <= set(windows[0])
    assert any(x.get("event") == "detection" for x in lines)
    assert json.loads(fired.read_text())["start"] == 0.0
    assert lines[-1]["summary"]["ended"] == ENDED


def session_lines(model: Path, url: str, **kw) -> tuple[list[dict], dict]:
    """A LiveSession here (decoding in a worker process, as the CLI does) until the source ends."""
    from mmdeploy.runtime import load_predictor

    session = LiveSession(LiveSource(url, url), load_predictor(model, "torch"), 2.0, 1.0, reconnects=0, **kw)
    lines = list(session.run())
    return lines, session.summary()["summary"]


@pytest.mark.slow
@needs_ffmpeg
def test_http_and_hls_streams(tiny_bundle, clip, tmp_path):
    # HTTP progressive: FFmpeg serves the stream to the one client that connects
    port = free_port()
    with publish(clip, f"http://127.0.0.1:{port}/live.ts", "-listen", "1"):
        time.sleep(0.5)
        lines, summary = session_lines(tiny_bundle, f"http://127.0.0.1:{port}/live.ts")
    windows = [x for x in lines if "probs" in x]
    assert [w["start"] for w in windows] == [0.0, 1.0, 2.0, 3.0, 4.0], lines
    assert lines[-1]["event"] == "ended" and summary["dropped"] == 0

    # HLS: a live playlist that FFmpeg writes into a folder a local HTTP server serves
    folder = tmp_path / "hls"
    folder.mkdir()
    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with process([FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy", "-f",
                      "hls", "-hls_time", "1", "-hls_list_size", "0", str(folder / "live.m3u8")],
                     stderr=subprocess.DEVNULL):
            deadline = time.monotonic() + 20
            while not (folder / "live.m3u8").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            lines, summary = session_lines(tiny_bundle, f"http://127.0.0.1:{server.server_port}/live.m3u8",
                                           read_s=3.0)
    finally:
        server.shutdown()
    windows = [x for x in lines if "probs" in x]
    assert len(windows) >= 3 and windows[0]["modalities"] == ["audio", "video"], lines
    assert all(w["latency_ms"] >= 0 for w in windows)


@pytest.mark.slow
def test_a_capture_device_with_format(tiny_bundle):
    """A device FFmpeg has (lavfi's test pattern and tone in real time, as a camera and a microphone would be):
    raw frames are all keyframes, so windows have video from the first one."""
    from mmdeploy.runtime import load_predictor

    graph = ("testsrc2=size=96x72:rate=25,realtime[out0];"
             "sine=frequency=440:sample_rate=16000,arealtime[out1]")
    session = LiveSession(LiveSource(graph, "lavfi", format="lavfi"), load_predictor(tiny_bundle, "torch"), 2.0, 1.0,
                          reconnects=0, duration_s=3.0)
    windows = [x for x in session.run() if "probs" in x]
    assert [w["start"] for w in windows] == [0.0, 1.0] and all(w["modalities"] == ["audio", "video"] for w in windows)
    assert session.summary()["summary"]["ended"] == "reached --duration 3 s"
    session.join(10)  # the reader thread ends with its worker: none is left for the interpreter's exit
    assert session.readers == []


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
@needs_ffmpeg
def test_a_killed_source_reconnects_and_sigint_ends_with_a_summary(tiny_bundle, clip):
    port = free_port()
    url = f"udp://127.0.0.1:{port}?pkt_size=1316"
    with watch(tiny_bundle, f"udp://127.0.0.1:{port}", "--read-timeout", "1.5", "--reconnects", "3") as proc:
        wait_udp_bound(port, proc)
        with publish(clip, url) as pub:
            time.sleep(3.5)
            os.killpg(pub.pid, signal.SIGKILL)  # the publisher dies mid-stream
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if Path("/proc/net/udp").read_text().count(f":{port:04X} ") == 0:
                continue  # the old socket is closed; wait for the reconnect to bind a new one
            break
        time.sleep(2.5)  # lost (1.5 s without data) + 1 s backoff, then listening again
        with publish(clip, url) as pub:
            pub.wait(30)
        proc.send_signal(signal.SIGINT)
        lines, err = finish(proc)
    assert proc.returncode == 0, err
    events = [x.get("event") for x in lines]
    assert "lost" in events and "reconnect" in events
    windows = [x for x in lines if "probs" in x]
    starts = [w["start"] for w in windows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # stream time goes on
    summary = lines[-1]["summary"]
    assert summary["reconnects"] >= 1 and summary["windows"] == len(windows) >= 3
    assert summary["latency_ms"]["p50"] is not None and summary["ended"] == "interrupted"
    assert "summary:" in err and "reconnecting in 1 s" in err


@needs_ffmpeg
def test_a_source_that_never_opens_is_one_clear_line(tiny_bundle):
    port = free_port()
    with watch(tiny_bundle, f"udp://127.0.0.1:{port}", "--open-timeout", "1", "--reconnects", "1") as proc:
        lines, err = finish(proc, timeout=90)
    assert proc.returncode == 2
    assert f"error: udp://127.0.0.1:{port}: no stream within 1 s (open timeout)" in err
    assert lines[-1]["summary"]["windows"] == 0 and lines[-1]["summary"]["reconnects"] == 1


def test_inputs_this_ffmpeg_lacks_are_one_line():
    from mmdeploy.errors import MediaError
    from mmdeploy.media.live import open_source

    with pytest.raises(MediaError, match="has no input format 'nosuchdevice'; capture with the ffmpeg command"):
        open_source(LiveSource("x", "x", format="nosuchdevice"), 1.0, 1.0)
    try:
        container, _ = open_source(LiveSource("srt://127.0.0.1:9", "srt"), 1.0, 1.0)
    except MediaError as exc:  # PyAV's wheels have no SRT: the line says how to pipe it in instead
        assert "has no srt:// protocol" in exc.reason or "cannot open" in exc.reason or "no stream" in exc.reason
    else:  # a build with SRT: nothing listens on port 9, so the open times out
        container.close()


# ---- the service's WebSocket (/live/ws), in-process ------------------------------------------------------
def test_live_request_bounds():
    from mmdeploy.serving.live_ws import Rate, parse
    from mmdeploy.settings import Settings

    settings = Settings(live_sources="rtsp://cam1/stream, udp://239.0.0.1:5000")
    assert parse({}, settings) == (parse({"type": "webm"}, settings)[0], None)
    assert parse({"window": "x"}, settings)[1].startswith("window and hop: expected numbers")
    assert "window=0.01" in parse({"window": "0.01"}, settings)[1]
    assert "expected one of webm, mp4, ts" in parse({"type": "avi"}, settings)[1]
    assert "opens no URL a request names" in parse({"source": "http://169.254.169.254/"}, settings)[1]
    assert "opens no URL" in parse({"source": "rtsp://cam1/stream"}, Settings())[1]
    request, problem = parse({"source": "rtsp://cam1/stream", "hop": "1"}, settings)
    assert problem is None and request.source == "rtsp://cam1/stream" and request.hop == 1.0
    now = [0.0]
    rate = Rate(1000, burst_s=2.0, clock=lambda: now[0])
    assert rate.take(2000) and not rate.take(1)
    now[0] = 0.5
    assert rate.take(500) and not rate.take(1)


@pytest.fixture(scope="module")
def webm_clip(tmp_path_factory) -> Path:
    """VP8 + Opus WebM: what a browser's MediaRecorder sends."""
    if FFMPEG is None:
        pytest.skip("ffmpeg CLI missing (make tools)")
    path = tmp_path_factory.mktemp("webm") / "clip.webm"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=25:duration=4", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=48000:duration=4", "-c:v", "libvpx", "-deadline", "realtime",
                    "-g", "25", "-b:v", "300k", "-c:a", "libopus", "-f", "webm", str(path)], check=True, timeout=60)
    return path


@contextlib.contextmanager
def live_app(model: Path, **knobs):
    """The /live app (serving/live_ws.py) in-process, on the tiny model; decoding in worker processes."""
    from starlette.testclient import TestClient

    from mmdeploy.runtime import load_predictor
    from mmdeploy.serving.live_ws import LiveSocket
    from mmdeploy.settings import Settings

    predictor = load_predictor(model, "torch")

    async def ready():
        return predictor

    yield TestClient(LiveSocket(Settings(**knobs), DecodeOptions(), ready))


def received(ws, until: str) -> list[dict]:
    out = []
    while True:
        message = ws.receive_json()
        out.append(message)
        if until in message:
            return out


TESTCLIENT = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


@TESTCLIENT
@needs_ffmpeg
def test_a_browser_stream_over_the_websocket(tiny_bundle, webm_clip):
    data = webm_clip.read_bytes()
    with live_app(tiny_bundle) as client, client.websocket_connect("/ws?window=0&hop=1&type=webm") as ws:
        ready = ws.receive_json()["ready"]
        assert ready["window"] == 2.0 and ready["hop"] == 1.0
        assert ready["classes"] == ["alpha", "beta", "gamma", "delta"]
        for i in range(0, len(data), 16_000):
            ws.send_bytes(data[i:i + 16_000])
        ws.send_json({"stop": True})
        lines = received(ws, "summary")
    windows = [x for x in lines if "probs" in x]
    assert [w["start"] for w in windows] == [0.0, 1.0, 2.0]
    assert all(w["modalities"] == ["audio", "video"] and set(w["per_modality"]) == {"audio", "video"}
               for w in windows)
    assert lines[-1]["summary"]["windows"] == 3


@TESTCLIENT
@needs_ffmpeg
def test_websocket_bounds_and_a_hostile_stream_cost_only_their_session(tiny_bundle, webm_clip):
    with live_app(tiny_bundle) as client:
        with client.websocket_connect("/ws?type=webm") as ws:  # bytes that are no stream: this session only
            ws.receive_json()
            ws.send_bytes(os.urandom(40_000))
            # the end of the stream settles it: random bytes can read as the size of an element still to come,
            # which a demuxer waits for (the idle bound ends that; the silence case below)
            ws.send_json({"stop": True})
            lines = received(ws, "summary")
            assert lines[0]["event"] == "ended" and lines[0]["failed"] and "cannot open" in lines[0]["message"]
        with client.websocket_connect("/ws?type=webm") as ws:  # the next session decodes as if nothing happened
            ws.receive_json()
            ws.send_bytes(webm_clip.read_bytes())
            ws.send_json({"stop": True})
            assert received(ws, "summary")[-1]["summary"]["windows"] == 2  # 4 s at the model's 2-s hop
    with live_app(tiny_bundle, live_sessions=1, live_idle_s=1.0, live_max_bytes_per_s=50_000) as client:
        with client.websocket_connect("/ws?type=webm") as ws:  # silence: the idle bound
            ws.receive_json()
            lines = received(ws, "summary")
            assert ws.receive_json() == {"error": "no data for 1 s (MMDEPLOY_LIVE_IDLE_S)"}
        with client.websocket_connect("/ws?type=webm") as ws:  # a flood: the bytes-per-second bound
            ws.receive_json()
            data = webm_clip.read_bytes()  # ~190 KB in thirds: past the 2-s burst (100 KB) unless 1.8 s pass
            for i in range(3):
                ws.send_bytes(data[i * len(data) // 3:(i + 1) * len(data) // 3])
            lines = received(ws, "error")
            assert "more than 50000 bytes per second (MMDEPLOY_LIVE_MAX_BYTES_PER_S)" in lines[-1]["error"]
        with client.websocket_connect("/ws?type=webm") as first, client.websocket_connect("/ws") as second:
            first.receive_json()
            assert "1 live sessions already run (MMDEPLOY_LIVE_SESSIONS=1)" in second.receive_json()["error"]
        with client.websocket_connect("/ws?source=udp://127.0.0.1:9") as ws:
            assert "opens no URL a request names" in ws.receive_json()["error"]
