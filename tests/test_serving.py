"""The HTTP service, end to end: a real `mmdeploy serve` (BentoML) process on a free loopback port, real clips.

One server per session (started in its own process group, stopped by signalling the group), serving a
tiny random bundle exported to ONNX. Uploads come from ../shared/media; broken files are made in tmp.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.results import ClassifyResult, TimelineResult, TimelineWindow
from tests.servers import free_port, stop_server, wait_ready

httpx = pytest.importorskip("httpx")

MAX_UPLOAD_MB = 2
READY_DEADLINE_S = 120


def start_server(run: Path | None, tmp: Path, **env: str) -> tuple[subprocess.Popen, str, Path]:
    """`mmdeploy serve --model RUN` (RUN None: plain `bentoml serve mmdeploy.service:AVClassifier`, the model from
    the environment) on a free 127.0.0.1 port, in its own process group -> (process, base URL, log file).
    Pass TMPDIR only with a short `tmp` (BentoML's unix sockets live there)."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    environ = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True",
               "MMDEPLOY_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB), "OMP_NUM_THREADS": "1"}
    environ.pop("MMDEPLOY_MODEL", None)
    environ.update(env)
    if run is not None:
        command = ["-m", "mmdeploy", "serve", "--model", str(run), "--backend", "onnxruntime"]
    else:
        command = ["-m", "bentoml", "serve", "mmdeploy.service:AVClassifier"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, *command, "--host", "127.0.0.1", "--port", str(port)], env=environ,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", log


@contextlib.contextmanager
def running_server(run: Path, tmp: Path, **env: str):
    """`mmdeploy serve --model RUN` on a free 127.0.0.1 port; yields (URL, process, log); stops its process group."""
    proc, url, log = start_server(run, tmp, **env)
    try:
        wait_ready(proc, url, log, READY_DEADLINE_S)
        yield url, proc, log
    finally:
        stop_server(proc)



@pytest.fixture(scope="session")
def served_run(tiny_exported) -> Path:
    """The tiny bundle exported to ONNX, shared with the export and runtime tests (exported once)."""
    return tiny_exported[0]


_SHARED: dict[str, object] = {}
MAX_WINDOWS = 100  # the shared server's MMDEPLOY_MAX_WINDOWS


def shared_server(run: Path, tmp_path_factory, request) -> str:
    """One server for this module and test_ui.py: started on first use, stopped at the end of the session
    by the finalizer of the (session-scoped) fixture that started it."""
    if "url" not in _SHARED:
        stack = contextlib.ExitStack()
        tmp = tmp_path_factory.mktemp("server")
        (tmp / "tmp").mkdir()  # the temp folder, watched for uploads left behind
        # 8 decode processes: a burst of uploads decodes side by side and reaches the model together
        url, proc, log = stack.enter_context(running_server(run, tmp, TMPDIR=str(tmp / "tmp"),
                                                            MMDEPLOY_DECODE_PROCESSES="8",
                                                            MMDEPLOY_MAX_WINDOWS=str(MAX_WINDOWS)))
        _SHARED.update(url=url, proc=proc, log=log, tmp=tmp / "tmp")
        request.addfinalizer(lambda: (stack.close(), _SHARED.clear()))
    return _SHARED["url"]


@pytest.fixture(scope="session")
def server(served_run, tmp_path_factory, request) -> str:
    return shared_server(served_run, tmp_path_factory, request)


def server_log() -> str:
    return Path(_SHARED["log"]).read_text(errors="replace")


def post(url: str, path: Path | None = None, name: str | None = None, data: bytes | None = None,
         field: str = "video", endpoint: str = "/classify", **form: str) -> httpx.Response:
    content = data if data is not None else path.read_bytes()
    return httpx.post(url + endpoint, files={field: (name or path.name, content)}, data=form or None, timeout=120)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples `name{...labels...}`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---- results --------------------------------------------------------------------------------
def test_classify_returns_the_result_json(server, media_dir, served_run):
    from mmdeploy.bundle import read_meta

    r = post(server, media_dir / "cremad_1001_DFA_ANG_XX.flv")
    assert r.status_code == 200, r.text
    body = r.json()
    classes = read_meta(served_run)["classes"]
    assert body["file"] == "cremad_1001_DFA_ANG_XX.flv"
    assert body["label"] in classes and body["label"] == max(body["probs"], key=body["probs"].get)
    assert sum(body["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["modalities"] == ["audio", "video"]
    for m in ("audio", "video"):
        opinion = body["per_modality"][m]
        assert opinion["label"] in classes and 0 < opinion["score"] <= 1
        assert opinion["agrees"] == (opinion["label"] == body["label"])
    assert body["backend"] == "onnxruntime-cpu"
    assert set(body["timings_ms"]) == {"decode", "features", "infer"}
    assert body["window"] == {"start": 0.0, "end": 2.0}  # the model's first 2-s window of a 2.2-s clip
    ClassifyResult.model_validate(body)  # what /docs declares


def test_a_long_file_says_which_window_was_classified(server, media_dir):
    body = post(server, media_dir / "bbb_vp8_vorbis_30s.webm").json()
    assert body["window"] == {"start": 0.0, "end": 2.0}


@pytest.mark.parametrize("clip, used", [("screencast_vp8_noaudio.webm", ["video"]),
                                        ("espeak_en_speech.wav", ["audio"])])
def test_one_modality_files_use_that_head(server, media_dir, clip, used):
    r = post(server, media_dir / clip)
    assert r.status_code == 200, r.text
    assert r.json()["modalities"] == used and list(r.json()["per_modality"]) == used


def test_service_tensors_equal_training_tensors(server, media_dir, served_run, tmp_path):
    """What the service feeds the model (jobs.file_job -> pack -> unpack: numpy_features, no torch) equals what
    training reads (FeatureCache / AVDataset: torch's features) within the one stated tolerance (frames
    bit-identical, spectrograms to numpy_features.TOLERANCE), and the HTTP answer equals the model on
    training tensors."""
    import torch

    from mmdeploy.numpy_features import TOLERANCE

    from mmdeploy.bundle import load_bundle
    from mmdeploy.jobs import file_job
    from mmdeploy.data.dataset import AVDataset
    from mmdeploy.data.manifest import Item, Manifest
    from mmdeploy.runtime import load_predictor
    from mmdeploy.serving.remote import pack, unpack

    spec = load_bundle(served_run, with_model=False).spec
    clips = ["cremad_1001_DFA_ANG_XX.flv", "iphone_rot180_audiofirst.mov"]
    items = [Item(path=str(media_dir / c), label="alpha", split="test") for c in clips]
    dataset = AVDataset(Manifest(tmp_path / "m.csv", items, ["alpha", "beta", "gamma", "delta"]), "test", spec,
                        tmp_path / "cache")
    predictor = load_predictor(served_run, "onnxruntime")
    for i, clip in enumerate(clips):
        job = file_job(str(media_dir / clip), spec)
        audio, video = unpack(pack(job["audio"][None], job["video"][None]), spec)
        trained = dataset[i]
        assert float((torch.from_numpy(audio[0]) - trained["audio"]).abs().max()) <= TOLERANCE["audio"]
        assert torch.equal(torch.from_numpy(video[0]), trained["video"])
        expected = predictor.predict(trained["audio"][None].numpy(), trained["video"][None].numpy())["fused"][0]
        served = post(server, media_dir / clip).json()["probs"]
        np.testing.assert_allclose([served[c] for c in predictor.classes], expected, rtol=1e-5, atol=1e-6)


def test_timeline_streams_ndjson(server, media_dir):
    path = media_dir / "bbb_vp8_vorbis_30s.webm"
    lines = []
    with httpx.stream("POST", server + "/timeline", files={"video": (path.name, path.read_bytes())},
                      data={"window": "5", "hop": "5"}, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    windows, final = lines[:-1], lines[-1]
    assert [(w["start"], w["end"]) for w in windows] == [(5.0 * i, 5.0 * i + 5) for i in range(6)]
    assert all(w["file"] == path.name and w["label"] in w["probs"] for w in windows)
    assert final["windows"] == [{k: w[k] for k in ("start", "end", "label", "score")} for w in windows]
    assert final["label"] in final["probs"] and final["modalities"] == ["audio", "video"]
    assert final["window"] == {"start": 0.0, "end": 30.0}
    for w in windows:
        TimelineWindow.model_validate(w)
    TimelineResult.model_validate(final)


@pytest.mark.parametrize("form", [{"hop": "inf"}, {"hop": "1e308"}, {"hop": "nan"}, {"hop": "-1"}, {"hop": "0.001"},
                                  {"window": "0.001"}, {"window": "1e-300"}, {"window": "-inf"}, {"window": "601"},
                                  {"window": "abc"}, {"hop": "1" * 2000}])
def test_timeline_window_and_hop_out_of_bounds_are_400(server, media_dir, form):
    r = post(server, media_dir / "bbb_vp8_vorbis_30s.webm", endpoint="/timeline", **form)
    assert r.status_code == 400, r.text
    assert ("window" in r.json()["error"] or "hop" in r.json()["error"]), r.text


def test_timeline_window_count_is_bounded_per_request(server, media_dir):
    r = post(server, media_dir / "bbb_vp8_vorbis_30s.webm", endpoint="/timeline", window="0.2", hop="0.2")
    assert r.status_code == 400 and f"at most {MAX_WINDOWS}" in r.json()["error"], r.text  # 150 windows


def test_timeline_stops_decoding_when_the_client_goes_away(server, media_dir):
    import psutil

    path = media_dir / "bbb_vp8_vorbis_30s.webm"  # 75 windows of 0.4 s: several seconds of decoding
    with httpx.stream("POST", server + "/timeline", files={"video": (path.name, path.read_bytes())},
                      data={"window": "0.4", "hop": "0.4"}, timeout=120) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines), next(lines)
        busy = [p.pid for p in psutil.Process(_SHARED["proc"].pid).children(recursive=True)]
    time.sleep(1.5)  # the disconnect reaches the service; it kills the decoder
    alive = {p.pid for p in psutil.Process(_SHARED["proc"].pid).children(recursive=True)}
    stopped = [pid for pid in busy if pid not in alive]
    assert stopped, "no decode process ended after the client went away"
    assert post(server, media_dir / "grid_s1_bbaf2n.mpg").status_code == 200


# ---- bad input: 4xx with {"error"}, never a 500, and the service keeps serving ----------------
def truncated(src: Path, dest: Path, fraction: float = 0.6) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


def test_bad_uploads_get_4xx_json(server, media_dir, tmp_path):
    cases = {
        "empty.mp4": b"",
        "notes.mp4": b"this is a text file, not a video\n" * 20,
        "garbage.webm": np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        # index (moov) at the end: cut at 60 % leaves no index
        "bbb_cut.mp4": truncated(media_dir / "bbb_h264_aac51.mp4", tmp_path / "bbb_cut.mp4").read_bytes(),
    }
    for name, data in cases.items():
        r = post(server, name=name, data=data)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.json()["error"].startswith(name), r.text
        r = post(server, name=name, data=data, endpoint="/timeline")
        assert 400 <= r.status_code < 500 and "error" in r.json(), (name, r.status_code, r.text)


def flipped(src: Path, dest: Path, seed: int = 16, count: int = 256) -> Path:
    """`src` with `count` bytes inverted at seeded random places (seed 16 on the H.264 + AAC 5.1 clip makes
    FFmpeg 7 / PyAV 18 segfault in the decoder)."""
    data = bytearray(src.read_bytes())
    for i in np.random.default_rng(seed).integers(0, len(data), count):
        data[i] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def request_temp_files() -> list[Path]:
    return [p for d in Path(_SHARED["tmp"]).glob("bentoml-request-*") for p in d.iterdir()]


def test_a_decoder_crash_costs_only_its_upload(server, media_dir, tmp_path):
    """A file that crashes FFmpeg gets a 422 naming the crash; the uploads decoding beside it are answered,
    the service stays ready, and no upload is left in the temp folder."""
    bad = flipped(media_dir / "bbb_h264_aac51.mp4", tmp_path / "flipped.mp4")
    good = media_dir / "cremad_1001_DFA_ANG_XX.flv"
    with ThreadPoolExecutor(6) as pool:
        crashed = pool.submit(post, server, bad)
        others = [pool.submit(post, server, good) for _ in range(5)]
        r = crashed.result()
        codes = [f.result().status_code for f in others]
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("flipped.mp4: the decoder crashed (signal 11"), r.text
    assert codes == [200] * 5
    assert httpx.get(server + "/readyz").status_code == 200
    assert post(server, bad, endpoint="/timeline").status_code == 422
    deadline = time.monotonic() + 10
    while request_temp_files() and time.monotonic() < deadline:  # removed once the answer is sent
        time.sleep(0.2)
    assert request_temp_files() == []


def test_a_seeded_slice_of_the_fuzz_corpus_gets_no_5xx(server):
    """20 files of benchmarks/fuzz_corpus.py (every recipe on two seed clips; the full 1,000-file run is
    `benchmarks/serve_load.py --fuzz`): each is answered 200 or 4xx, never 5xx, and the service stays ready."""
    files = [fuzz_corpus()["mutate"](i) for i in range(20)]  # recipes 0-9 on the first two seed clips
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda f: post(server, name=f[0], data=f[1]), files))
    codes = {name: r.status_code for (name, _), r in zip(files, answers)}
    assert all(c == 200 or 400 <= c < 500 for c in codes.values()), codes
    assert httpx.get(server + "/readyz").status_code == 200


def fuzz_corpus():
    import runpy

    return runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "fuzz_corpus.py"))


def test_a_stream_that_appears_mid_file_gets_one_answer_from_both_routes(server):
    """FLVs whose stream list grows after the header (fuzz_corpus.LATE: a subtitle stream, late audio): /classify
    and /timeline both answer 200, and the timeline's first window is /classify's answer (PyAV's demuxer raised
    IndexError at the end of such files, on one route or the other)."""
    fuzz = fuzz_corpus()
    for j in range(len(fuzz["LATE"])):
        name, data = fuzz["late_stream"](j)
        one = post(server, name=name, data=data)
        lines = post(server, name=name, data=data, endpoint="/timeline")
        assert (one.status_code, lines.status_code) == (200, 200), (name, one.text, lines.text)
        rows = [json.loads(line) for line in lines.text.splitlines() if line]
        assert "error" not in rows[-1], (name, rows[-1])
        first = rows[0]
        assert first["label"] == one.json()["label"], name
        assert first["probs"] == pytest.approx(one.json()["probs"], abs=1e-6), name


def test_truncated_faststart_file_is_answered_not_a_500(server, media_dir, tmp_path):
    # index at the start: the first window is still there, so a result (or a 4xx) are both fine
    cut = truncated(media_dir / "phone_vfr_h264_aac_mono.mp4", tmp_path / "phone_cut.mp4")
    r = post(server, cut)
    assert r.status_code == 200 or (400 <= r.status_code < 500 and "error" in r.json()), r.text


def test_malformed_requests_get_4xx_json(server, media_dir):
    clip = media_dir / "grid_s1_bbaf2n.mpg"
    assert post(server, clip, field="file").status_code == 400  # wrong field name
    r = httpx.post(server + "/classify", files={"video": (None, "http://127.0.0.1:1/x.mp4")}, timeout=30)
    assert r.status_code == 400 and "error" in r.json()  # a string field, not a file: never fetched as a URL
    r = httpx.post(server + "/classify", json={"video": "x"}, timeout=30)
    assert r.status_code == 415 and "multipart" in r.json()["error"]
    r = httpx.post(server + "/classify", content=b"--x\r\nbroken", timeout=30,
                   headers={"content-type": "multipart/form-data; boundary=y"})
    assert r.status_code == 400 and "error" in r.json()
    r = post(server, media_dir / "bbb_vp8_vorbis_30s.webm", endpoint="/timeline", hop="0.001")
    assert r.status_code == 400 and "hop" in r.json()["error"]
    assert post(server, clip).status_code == 200  # still serving


def multipart(*parts: tuple[bytes, bytes]) -> tuple[bytes, dict[str, str]]:
    """Raw multipart body from (Content-Disposition params, content) pairs, for what httpx would escape."""
    body = b"".join(b"--b\r\nContent-Disposition: form-data; " + head + b"\r\n\r\n" + data + b"\r\n"
                    for head, data in parts) + b"--b--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=b"}


def test_too_many_or_too_long_fields_are_400(server, media_dir):
    clip = (media_dir / "grid_s1_bbaf2n.mpg").read_bytes()
    fields = [(f'name="f{i}"'.encode(), b"x") for i in range(1200)]
    body, headers = multipart((b'name="video"; filename="a.mpg"', clip), *fields)
    r = httpx.post(server + "/classify", content=body, headers=headers, timeout=60)
    assert r.status_code == 400 and "fields" in r.json()["error"], r.text
    body, headers = multipart((b'name="video"; filename="a.mpg"', clip), (b'name="note"', b"x" * 100_000))
    r = httpx.post(server + "/classify", content=body, headers=headers, timeout=60)
    assert r.status_code == 400 and "'note' is not one this route takes" in r.json()["error"], r.text
    body, headers = multipart((b'name="video"; filename="a.mpg"', clip), (b'name="hop"', b"1" * 100_000))
    r = httpx.post(server + "/timeline", content=body, headers=headers, timeout=60)
    assert r.status_code == 400 and "'hop' is longer than 1000 bytes" in r.json()["error"], r.text
    r = post(server, media_dir / "grid_s1_bbaf2n.mpg", window="2")  # /classify takes no window
    assert r.status_code == 400 and "'window'" in r.json()["error"], r.text


def test_file_names_echo_a_base_name_and_control_characters_are_400(server, media_dir):
    clip = (media_dir / "grid_s1_bbaf2n.mpg").read_bytes()
    before = server_log().count("Traceback")
    body, headers = multipart((b'name="video"; filename="a\x00b.mpg"', clip))
    r = httpx.post(server + "/classify", content=body, headers=headers, timeout=60)
    assert r.status_code == 400 and "control characters" in r.json()["error"], r.text
    r = post(server, name="x" * 300 + ".mpg", data=clip)
    assert r.status_code == 400 and "255 bytes" in r.json()["error"], r.text
    r = post(server, media_dir / "grid_s1_bbaf2n.mpg", endpoint="/timeline", window="abc")
    assert r.status_code == 400 and "'window'" in r.json()["error"], r.text
    for name, base in [("..\\..\\windows\\win.ini", "win.ini"), ("C:\\Users\\me\\clip.mpg", "clip.mpg"),
                       ("../../etc/clip.mpg", "clip.mpg"), ("a/b\\c.mpg", "c.mpg")]:
        r = post(server, name=name, data=clip)
        assert r.status_code == 200 and r.json()["file"] == base, (name, r.text)
    time.sleep(0.5)
    assert server_log().count("Traceback") == before  # refused in one line, no traceback in the log


def test_openapi_declares_models_errors_and_ndjson(server):
    spec = httpx.get(server + "/docs.json").json()
    ops = {route: spec["paths"][route]["post"] for route in ("/classify", "/timeline")}
    for op in ops.values():
        assert {"200", "400", "413", "415", "422", "503"} <= set(op["responses"])
        assert op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert ops["/classify"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/ClassifyResult")
    assert list(ops["/timeline"]["responses"]["200"]["content"]) == ["application/x-ndjson"]
    schemas = set(spec["components"]["schemas"])
    assert {"ClassifyResult", "TimelineWindow", "TimelineResult", "ErrorBody", "Window"} <= schemas
    page = httpx.get(server + "/")  # Swagger UI from this server's files, reading /docs.json
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_openapi_states_what_the_server_enforces(server, media_dir):
    """The upload is required, window/hop are 0 or [0.1, 600] s in the document, and the server answers just
    that: values on the bounds are taken, values past them are a 400 (the issue: unbounded numbers, body optional)."""
    spec = httpx.get(server + "/docs.json").json()
    for route in ("/classify", "/timeline"):
        body = spec["paths"][route]["post"]["requestBody"]
        assert body["required"] is True
        assert "video" in body["content"]["multipart/form-data"]["schema"]["required"]
        assert body["content"]["multipart/form-data"]["schema"]["additionalProperties"] is False
    fields = spec["paths"]["/timeline"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert fields["window"]["anyOf"] == [{"enum": [0]}, {"minimum": 0.1, "maximum": 600.0}]
    assert fields["hop"]["anyOf"] == [{"enum": [0]}, {"minimum": 0.1, "maximum": 600.0}]
    clip = media_dir / "grid_s1_bbaf2n.mpg"
    for window, ok in [("0", True), ("0.1", True), ("600", True), ("0.09", False), ("600.01", False)]:
        r = post(server, clip, endpoint="/timeline", window=window, hop="2")
        assert (r.status_code == 200) == ok, (window, r.status_code, r.text[:200])


def test_every_rejection_is_one_json_line_and_no_traceback(server, media_dir):
    """What BentoML's own parsing refused (a 400-digit window: {"detail": [...]} and an ERROR traceback), what
    it took silently (a field twice, window as a file) and what Starlette answers in plain text (GET on an
    upload route) are all the project's {"error": ...} alone."""
    clip = (media_dir / "grid_s1_bbaf2n.mpg").read_bytes()
    before = server_log().count("Traceback")
    cases = [
        ({"files": {"video": ("a.mpg", clip)}, "data": {"window": "1" * 400}}, 400, "finite"),
        ({"files": {"video": ("a.mpg", clip)}, "data": {"hop": "-" + "9" * 400}}, 400, "finite"),
        ({"files": [("video", ("a.mpg", clip)), ("window", (None, "1")), ("window", (None, "2"))]}, 400, "once"),
        ({"files": [("video", ("a.mpg", clip)), ("hop", ("h.txt", b"1"))]}, 400, "is a file"),
        ({"files": [("video", ("a.mpg", clip)), ("video", ("b.mpg", clip))]}, 400, "once"),
        ({}, 415, "multipart"),
    ]
    for kwargs, status, words in cases:
        r = httpx.post(server + "/timeline", timeout=60, **kwargs)
        assert r.status_code == status and list(r.json()) == ["error"] and words in r.json()["error"], r.text
    r = httpx.get(server + "/classify", timeout=30)
    assert r.status_code == 405 and list(r.json()) == ["error"] and r.headers["allow"] == "POST", r.text
    time.sleep(0.5)
    assert server_log().count("Traceback") == before


@pytest.mark.parametrize("name", ["a" * 241 + ".mpg", "b" * 251 + ".mpg", "c" * 255, "é" * 125 + ".mpg",
                                  "clip " * 50 + "x.mpg"])
def test_any_file_name_the_guard_allows_is_classified(server, media_dir, name):
    """Names up to the 255-byte limit (BentoML wrote tmpXXXXXXXX + the client's name: past 255 bytes, a 500);
    the name is echoed back and never used on disk."""
    assert len(name.encode()) <= 255
    r = post(server, name=name, data=(media_dir / "grid_s1_bbaf2n.mpg").read_bytes())
    assert r.status_code == 200 and r.json()["file"] == name, r.text[:300]


def raw_post(url: str, head: bytes, body: bytes) -> bytes:
    """Send `head` + `body` on one connection as they are; everything the server sends back until it closes."""
    import socket

    host, port = url.rsplit("/", 1)[-1].split(":")
    out = b""
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head + body)
        try:
            while data := s.recv(65536):
                out += data
        except (ConnectionResetError, TimeoutError):
            pass
    return out


def test_a_content_length_shorter_than_the_body_is_one_log_line(server, media_dir):
    """The bytes past Content-Length are a second, malformed request: the first is answered, uvicorn refuses
    the rest, and the log says so once (BentoML's logging printed each uvicorn line twice), no traceback."""
    clip = (media_dir / "grid_s1_bbaf2n.mpg").read_bytes()
    part = b'--b\r\nContent-Disposition: form-data; name="video"; filename="a.mpg"\r\n\r\n' + clip + b"\r\n--b--\r\n"
    head = (b"POST /classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: %d\r\n\r\n" % len(part))
    before = server_log().splitlines()
    out = raw_post(server, head, part + b"x" * 100_000)
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    time.sleep(1.0)
    new = server_log().splitlines()[len(before):]
    assert [line for line in new if "Invalid HTTP request" in line][1:] == [], new
    assert not [line for line in new if "Traceback" in line or "Exception in ASGI" in line], new
    short = head.replace(b"%d" % len(part), b"100")
    out = raw_post(server, short, part)
    assert out.startswith(b"HTTP/1.1 400") and b'{"error": ' in out, out[:300]


def test_the_docs_page_makes_no_outside_request_and_answers_are_nosniff(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text and "validatorUrl: null" in page.text
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', page.text), page.text  # nothing from elsewhere
    assert "googletagmanager" not in page.text
    for path in ("/", "/docs.json", "/readyz", "/ui/", "/static_content/swagger-ui.css", "/no-such-page"):
        assert httpx.get(server + path).headers.get("x-content-type-options") == "nosniff", path
    r = httpx.post(server + "/classify", timeout=30)
    assert r.headers.get("x-content-type-options") == "nosniff"


def test_a_redirect_stays_on_this_server_whatever_the_host_header(server):
    r = httpx.get(server + "/ui", headers={"host": "evil.example"}, follow_redirects=False)
    assert r.status_code in (301, 302, 307, 308) and r.headers["location"] == "/ui/", r.headers


def test_oversize_upload_is_413_early(server):
    too_big = MAX_UPLOAD_MB * (1 << 20) + 1
    r = post(server, name="big.mp4", data=b"\0" * too_big)  # Content-Length says so: refused unread
    assert r.status_code == 413 and "MMDEPLOY_MAX_UPLOAD_MB" in r.json()["error"]

    def chunks():  # no Content-Length (chunked): counted while streaming
        yield b'--b\r\nContent-Disposition: form-data; name="video"; filename="big.mp4"\r\n\r\n'
        for _ in range(4 * MAX_UPLOAD_MB):
            yield b"\0" * (1 << 19)
        yield b"\r\n--b--\r\n"

    r = httpx.post(server + "/classify", content=chunks(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "error" in r.json()


# ---- health, metrics, batching -------------------------------------------------------------------
def test_health_and_metrics(server, media_dir):
    assert post(server, media_dir / "grid_s1_bbaf2n.mpg").status_code == 200
    assert httpx.get(server + "/livez").status_code == 200
    assert httpx.get(server + "/readyz").status_code == 200
    text = httpx.get(server + "/metrics").text
    assert metric(text, "bentoml_service_request_total", endpoint="/classify", http_response_code="200") >= 1
    assert "bentoml_service_request_duration_seconds_bucket" in text


def test_concurrent_requests_share_model_calls(server, media_dir):
    clip = media_dir / "tears_of_steel_vp8_vorbis_mono.webm"
    data = clip.read_bytes()

    def calls_and_windows() -> tuple[float, float]:
        text = httpx.get(server + "/metrics").text
        name = "bentoml_service_adaptive_batch_size"
        return metric(text, name + "_count", method_name="predict"), metric(text, name + "_sum", method_name="predict")

    # Whether calls overlap depends on timing: BentoML's dispatcher batches the windows that arrive while a
    # model call is in flight, and the tiny model's call (about a millisecond, its threads not spin-waiting)
    # is short beside the gaps between decoded uploads on 2 cores: measured, 3 of 9 bursts of 16 shared a call.
    # Up to 20 bursts (about a second each; a miss about (2/3)**20, 3e-4) and the first shared call ends the test.
    shared = []
    for _ in range(20):
        calls0, windows0 = calls_and_windows()
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: post(server, name=clip.name, data=data), range(16)))
        codes = [r.status_code for r in answers]
        calls1, windows1 = calls_and_windows()
        assert codes == [200] * 16, [r.text for r in answers if r.status_code != 200][:2]
        assert windows1 - windows0 == 16  # every request's window went through the batchable API
        shared.append(calls1 - calls0 < 16)
        if shared[-1]:
            break
    assert any(shared), f"{16 * len(shared)} concurrent requests never shared a model call"


def test_a_model_that_cannot_load_is_503_quickly_and_logged_once(tmp_path):
    """Plain `bentoml serve` (no `mmdeploy serve` pre-check) on a model folder that does not exist: the model
    worker stays up, /readyz answers 503 within seconds every time, the cause is in the log once, /classify
    is a 503 naming it; SIGTERM to the process group ends every process within 10 s."""
    import psutil

    proc, url, log = start_server(None, tmp_path, MMDEPLOY_MODEL=str(tmp_path / "no-such-run"))
    try:
        deadline = time.monotonic() + READY_DEADLINE_S
        while "cannot be loaded" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        for _ in range(4):
            t0 = time.monotonic()
            r = httpx.get(url + "/readyz", timeout=30)
            assert r.status_code == 503 and time.monotonic() - t0 < 10
        r = post(url, name="a.mpg", data=b"x" * 100)
        assert r.status_code == 503 and "no-such-run" in r.json()["error"], r.text
        text = log.read_text(errors="replace")
        assert text.count("not ready: the model cannot be loaded") == 1, text[-3000:]
        assert text.count("the model cannot be loaded (BundleError") >= 2  # the model's own line, the API's line
        stopped_within(proc, 10)
    finally:
        stop_server(proc)


def stopped_within(proc: subprocess.Popen, seconds: float) -> None:
    """SIGTERM to the server's process group; every process of the server (workers, decode processes) ends
    within `seconds`."""
    import psutil
    import signal

    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=seconds)
    assert not alive, f"still running {time.monotonic() - t0:.1f} s after SIGTERM: {[p.cmdline() for p in alive]}"


def test_sigterm_stops_every_process_within_10s_while_a_request_is_in_flight(served_run, media_dir, tmp_path):
    proc, url, log = start_server(served_run, tmp_path)
    try:
        wait_ready(proc, url, log, READY_DEADLINE_S)
        path = media_dir / "bbb_vp8_vorbis_30s.webm"
        with httpx.stream("POST", url + "/timeline", files={"video": (path.name, path.read_bytes())},
                          data={"window": "0.4", "hop": "0.4"}, timeout=60) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # streaming: decode process, API worker and model worker all busy
            stopped_within(proc, 10)
    finally:
        stop_server(proc)


def test_serve_command_fails_in_one_line_without_a_model(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml")}
    env.pop("MMDEPLOY_MODEL", None)
    for args in (["--model", str(tmp_path / "missing")], []):
        r = subprocess.run([sys.executable, "-m", "mmdeploy", "serve", *args], env=env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2
        assert re.fullmatch(r"error: .*(no such bundle|mmdeploy export RUN --bento).*\n", r.stderr), r.stderr


# ---- pieces without a server ------------------------------------------------------------------------
def test_errors_become_4xx_or_503_and_bugs_stay_500():
    from mmdeploy.errors import MediaError
    from mmdeploy.serving.answers import NotReady, explain
    from mmdeploy.serving.remote import ModelCallError

    assert explain(MediaError("/tmp/x", "the decoder crashed (signal 11, SIGSEGV)"), "clip.mp4", 1) == \
        (422, "clip.mp4: the decoder crashed (signal 11, SIGSEGV)")
    assert explain(NotReady("the model cannot be loaded"), "clip.mp4", 1)[0] == 503
    assert explain(ModelCallError("no answer"), "clip.mp4", 1)[0] == 503
    status, message = explain(TimeoutError(), "clip.mp4", 0.05)
    assert status == 422 and message.startswith("clip.mp4: decoding took longer than 0.05 s")
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as bad input: it stays a 500
        explain(ZeroDivisionError(), "clip.mp4", 1)


def test_request_bounds():
    from mmdeploy.serving.bounds import base_name, count_problem, fields_problem, name_problem, timeline_problem

    assert timeline_problem(0, 0) is None and timeline_problem(5, 2.5) is None and timeline_problem(600, 0.1) is None
    for window, hop in [(float("inf"), 0), (0, float("nan")), (0.05, 0), (1e-300, 0), (0, 1e308), (601, 0), (-1, 0)]:
        assert timeline_problem(window, hop), (window, hop)
    assert count_problem(30.0, 0.1, 1000) is None and count_problem(None, 0.1, 10) is None
    assert "301 windows" in count_problem(30.05, 0.1, 300)
    assert base_name("..\\..\\windows\\win.ini") == "win.ini" and base_name("/x/") == "upload"
    assert name_problem("a\x00b") and name_problem("a\nb") and name_problem("é" * 200) and not name_problem("clip.mp4")
    assert fields_problem([{"name": "hop", "size": 3, "value": b"2.5"}], timeline=True) is None
    assert "'hop'" in fields_problem([{"name": "hop", "size": 3, "value": b"abc"}], timeline=True)
    assert "longer" in fields_problem([{"name": "hop", "size": 5000}], timeline=True)
    assert "not one this route takes" in fields_problem([{"name": "x", "size": 3, "value": b"abc"}])
    assert "not one this route takes" in fields_problem([{"name": "hop", "size": 1, "value": b"1"}])  # /classify
    assert "bounds" not in (fields_problem([{"name": "hop", "size": 3, "value": b"2.5"}], timeline=True) or "")
    assert "window=700" in fields_problem([{"name": "window", "size": 3, "value": b"700"}], timeline=True)


def test_openapi_patch_keeps_bentoml_paths():
    from mmdeploy.serving.schema import patch_openapi

    spec = {"paths": {"/classify": {"post": {"responses": {"200": {}}}}, "/readyz": {"get": {}}}}
    out = patch_openapi(spec)
    assert "/readyz" in out["paths"] and "503" in out["paths"]["/classify"]["post"]["responses"]
    assert "ClassifyResult" in out["components"]["schemas"]


def test_pack_round_trip_and_width_check(tiny_spec):
    from mmdeploy.serving.remote import pack, unpack

    rng = np.random.default_rng(0)
    audio = rng.standard_normal((3, 1, *tiny_spec.spectrogram_shape)).astype(np.float32)
    video = rng.standard_normal((3, *tiny_spec.frames_shape)).astype(np.float32)
    a, v = unpack(pack(audio, video), tiny_spec)
    assert np.array_equal(a, audio) and np.array_equal(v, video)
    with pytest.raises(ValueError, match="expected"):
        unpack(pack(audio, video)[:, 1:], tiny_spec)


def test_settings_come_from_env_and_bad_values_name_the_variable(monkeypatch):
    from mmdeploy.errors import ConfigError
    from mmdeploy.settings import Settings

    monkeypatch.setenv("MMDEPLOY_MAX_UPLOAD_MB", "0.5")
    monkeypatch.setenv("MMDEPLOY_BATCHING", "off")
    settings = Settings.from_env()
    assert settings.max_upload_bytes == 1 << 19 and settings.batching is False
    monkeypatch.setenv("MMDEPLOY_MAX_BATCH", "many")
    with pytest.raises(ConfigError, match="MMDEPLOY_MAX_BATCH='many'"):
        Settings.from_env()
