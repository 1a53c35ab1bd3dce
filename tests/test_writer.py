"""Generated media is byte-reproducible: the same frames and samples give the same file, whatever the heap
holds and whichever codec (mmdeploy/data/writer.py)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, rgb_to_yuv, video_frame


def test_bt601_limited_range_golden_values():
    rgb = np.array([[[255, 255, 255], [0, 0, 0]], [[255, 0, 0], [0, 255, 0]]], np.uint8)
    y, u, v = rgb_to_yuv(rgb, "yuv444p")
    assert y.tolist() == [[235, 16], [81, 145]]
    assert u.tolist() == [[128, 128], [90, 54]] and v.tolist() == [[128, 128], [240, 34]]
    y, u, v = rgb_to_yuv(rgb)  # 4:2:0: chroma is the mean of the 2x2 block
    assert y.shape == (2, 2) and u.shape == v.shape == (1, 1)
    assert u[0, 0] == round((128 + 128 + 90.203 + 53.797) / 4) and v[0, 0] == round((128 + 128 + 240 + 34.214) / 4)


def test_video_frame_round_trips_and_sets_every_padding_byte():
    rgb = np.random.default_rng(0).integers(0, 256, (34, 66, 3), np.uint8)
    frame = video_frame(rgb, "yuv444p")
    assert (frame.width, frame.height, frame.format.name) == (66, 34, "yuv444p")
    back = frame.to_ndarray(format="rgb24")
    assert np.abs(back.astype(int) - rgb).max() <= 3  # 8-bit limited-range round trip
    for plane in frame.planes:
        rows = np.frombuffer(bytes(plane), np.uint8).reshape(plane.height, plane.line_size)
        assert not rows[:, plane.width:].any()
    assert video_frame(rgb[:, :, :], "yuv420p10le").format.name == "yuv420p10le"


def test_encoder_options_keep_the_callers_and_pin_threads():
    assert encoder_options("libx264", {"preset": "veryfast", "x264-params": "bframes=3"}) == {
        "preset": "veryfast", "x264-params": "bframes=3:asm=0", "threads": "1"}
    assert encoder_options("aac") == {"threads": "1"}


CASES = [("mp4", "libx264", "aac"), ("mkv", "libx264", "aac"), ("webm", "libvpx-vp9", "libopus"),
         ("avi", "mpeg4", "libmp3lame")]


@pytest.mark.parametrize("ext,vcodec,acodec", CASES, ids=[f"{v}.{e}" for e, v, _ in CASES])
def test_same_input_same_bytes(tmp_path, ext, vcodec, acodec):
    """Measured before writer.py: 8 encodes of these frames gave 8 different files for x264 (mp4, mkv) and
    VP9/WebM; the allocations between encodes move the heap, as a long-lived process does."""
    import av

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (12, 96, 96, 3), np.uint8)
    rate = 48000 if acodec == "libopus" else 16000
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)[None]
    digests, junk = set(), []
    for i in range(6):
        junk = [os.urandom(int(n)) for n in rng.integers(1, 1 << 20, 3)]
        path = tmp_path / f"{i}.{ext}"
        with av.open(str(path), "w", options=CONTAINER_OPTIONS) as out:
            vs = out.add_stream(vcodec, rate=12, options=encoder_options(vcodec))
            vs.width = vs.height = 96
            vs.pix_fmt = "yuv420p"
            aus = out.add_stream(acodec, rate=rate, layout="mono", options=encoder_options(acodec))
            for pts, rgb in enumerate(frames):
                frame = video_frame(rgb)
                frame.pts = pts
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
            audio = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            audio.sample_rate, audio.pts = rate, 0
            out.mux(aus.encode(audio))
            out.mux(aus.encode(None))
        digests.add(hashlib.sha256(Path(path).read_bytes()).hexdigest())
    assert junk and len(digests) == 1
