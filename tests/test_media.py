"""mmdeploy.media: real clips from ../shared/media decode as their README says; generated clips prove sync,
rotation, streaming and clear errors on broken files."""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.errors import MediaError
from mmdeploy.media import decode_window, iter_windows, probe
from mmdeploy.spec import preset

SPEC = preset("synth")  # 16 kHz, 2-s window, 4 frames
PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]  # colour of second k: PALETTE[k % 4]
TONES = [440.0, 1000.0, 2000.0, 3000.0]                          # tone of second k: TONES[k % 4]


def write_clip(path: Path, seconds: float = 4.0, fps: int = 10, size: tuple[int, int] = (64, 48),
               rate: int = 16000, video: bool = True, audio: bool = True, layout: str = "mono",
               rotation: int | None = None, options: dict | None = None, vcodec: str = "libx264",
               acodec: str = "aac", pix_fmt: str = "yuv420p", marker: bool = False,
               flip: str | None = None, video_seconds: float | None = None) -> Path:
    """An H.264/AAC (by default) clip: second k shows PALETTE[k % 4] and plays a TONES[k % 4] sine.

    marker=True paints a white block in the stored frame's top-left quarter (to check rotation).
    """
    import av

    from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame

    with av.open(str(path), "w", options={**CONTAINER_OPTIONS, **(options or {})}) as out:
        if video:
            vs = out.add_stream(vcodec, rate=fps,
                                options=encoder_options(vcodec, {"preset": "veryfast"} if vcodec == "libx264" else {}))
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], pix_fmt
            vs.time_base = Fraction(1, fps)
            if rotation is not None:
                vs.set_display_rotation(rotation, hflip=flip == "hflip", vflip=flip == "vflip")
        if audio:
            aus = out.add_stream(acodec, rate=rate, layout=layout, options=encoder_options(acodec))
        frame_size = 1024
        n_audio = int(seconds * rate)
        t = np.arange(n_audio) / rate
        tone = np.sin(2 * np.pi * np.array(TONES)[(t.astype(int)) % 4] * t).astype(np.float32) * 0.5
        channels = len(av.AudioLayout(layout).channels)
        vi = ai = 0
        n_video = (seconds if video_seconds is None else video_seconds) * fps
        while (video and vi < n_video) or (audio and ai < n_audio):
            if video and vi < n_video and (not audio or ai >= n_audio or vi / fps <= ai / rate):
                img = np.zeros((size[1], size[0], 3), np.uint8)
                img[:] = PALETTE[int(vi / fps) % 4]
                if marker:
                    img[: size[1] // 2, : size[0] // 2] = 255
                frame = video_frame(img, pix_fmt)
                frame.pts = vi
                out.mux(vs.encode(frame))
                vi += 1
            else:
                chunk = tone[ai:ai + frame_size]
                frame = av.AudioFrame.from_ndarray(np.repeat(chunk[None], channels, 0), format="fltp",
                                                   layout=layout)
                frame.sample_rate, frame.pts = rate, ai
                out.mux(aus.encode(frame))
                ai += frame_size
        if video:
            out.mux(vs.encode(None))
        if audio:
            out.mux(aus.encode(None))
    return path


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def mean_colour(frame: np.ndarray) -> tuple[int, ...]:
    return tuple(int(round(v / 64.0)) * 64 for v in frame.reshape(-1, 3).mean(0))


def near(colour, expected) -> bool:
    return all(abs(a - b) <= 40 for a, b in zip(colour, expected))


@pytest.fixture(scope="module")
def av_clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("media") / "tone.mp4", seconds=4.0)


# ---- real clips ----------------------------------------------------------------------------------
# name: (has audio, has video, duration or None)
REAL = {
    "cremad_1001_DFA_ANG_XX.flv": (True, True, 2.235),
    "grid_s1_bbaf2n.mpg": (True, True, 2.98),
    "nasa_13013_multistream.mp4": (True, True, 13.056),
    "bbb_h264_aac51.mp4": (True, True, 5.312),
    "bbb_vp8_vorbis_30s.webm": (True, True, 30.003),
    "tears_of_steel_vp8_vorbis_mono.webm": (True, True, 2.003),
    "iphone_rot180_audiofirst.mov": (True, True, 2.675),
    "phone_vfr_h264_aac_mono.mp4": (True, True, 2.38),
    "vp9_opus_no_duration.webm": (True, True, None),
    "screencast_vp8_noaudio.webm": (False, True, 37.133),
    "bbb_h264_100subtitle_tracks_noaudio.mp4": (False, True, 10.1),
    "derived_nasa_h264_aac.mkv": (True, True, 13.12),
    "derived_iphone_h264_pcm.mov": (True, True, 2.733),
    "espeak_en_speech.wav": (True, False, 8.491),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_clip_decodes_as_readme_says(media_dir, name):
    has_audio, has_video, duration = REAL[name]
    info = probe(media_dir / name)
    assert (info.audio is not None, info.video is not None) == (has_audio, has_video)
    assert info.duration == (None if duration is None else pytest.approx(duration, abs=0.01))
    clip = decode_window(media_dir / name, SPEC, start=0.5)
    assert (clip.has_audio, clip.has_video) == (has_audio, has_video)
    expected_seconds = min(SPEC.window_seconds, (duration or 99) - 0.5)
    assert clip.seconds == pytest.approx(expected_seconds, abs=0.01)
    if has_audio:
        assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
        assert len(clip.audio) == round(clip.seconds * SPEC.sample_rate)
        assert np.isfinite(clip.audio).all()
    if has_video:
        assert clip.frames.dtype == np.uint8 and clip.frames.shape[0] == SPEC.frames
        assert clip.frames.shape[3] == 3
        assert np.all(np.diff(clip.frame_times) > 0), clip.frame_times
        assert 0.5 - 0.2 <= clip.frame_times[0] and clip.frame_times[-1] <= 0.5 + clip.seconds


def test_cremad_flv_short_clip_spreads_frames_over_its_content(media_dir):
    """VP6F + MP3 with a data stream first; a 2.2-s clip in a 3-s window still gets 3 distinct frames."""
    info = probe(media_dir / "cremad_1001_DFA_ANG_XX.flv")
    assert (info.audio.codec, info.video.codec, info.audio.stream, info.video.stream) == ("mp3float", "vp6f", 1, 2)
    spec = preset("cremad")
    clip = decode_window(media_dir / "cremad_1001_DFA_ANG_XX.flv", spec)
    assert clip.seconds == pytest.approx(2.235, abs=0.01)
    assert len(clip.frame_times) == 3 and len(set(clip.frame_times.tolist())) == 3
    assert clip.frame_times[-1] < 2.235
    assert clip.frame_times[-1] - clip.frame_times[0] > 1.2  # spread over the content, not bunched


def test_multistream_picks_default_then_best_quality(media_dir):
    info = probe(media_dir / "nasa_13013_multistream.mp4")
    assert (info.video.stream, info.video.width, info.video.height) == (3, 480, 270)
    assert (info.audio.stream, info.audio.sample_rate) == (4, 16000)
    clip = decode_window(media_dir / "nasa_13013_multistream.mp4", SPEC, start=2.0)
    assert clip.frames.shape[1:3] == (270, 480)
    # the derived MKV is a stream copy of exactly these two streams: same content
    other = decode_window(media_dir / "derived_nasa_h264_aac.mkv", SPEC, start=2.0)
    assert np.abs(clip.frames.astype(int) - other.frames.astype(int)).mean() < 1.0
    # same audio, 1024 samples (64 ms) apart: the MP4 keeps AAC's priming edit, the stream copy dropped it
    a, b = clip.audio[3000:29000], other.audio[3000 + 1024:29000 + 1024]
    assert np.corrcoef(a, b)[0, 1] > 0.99


def test_subtitle_streams_are_ignored(media_dir):
    info = probe(media_dir / "bbb_h264_100subtitle_tracks_noaudio.mp4")
    assert info.audio is None and info.video.stream == 0


def test_rotation_metadata_is_applied(media_dir):
    """The iPhone MOV (rotation 180) and its PCM stream copy: frames are turned upside down for display."""
    info = probe(media_dir / "iphone_rot180_audiofirst.mov")
    assert info.video.rotation == 180 and info.audio.stream == 0 and info.video.stream == 1
    clip = decode_window(media_dir / "iphone_rot180_audiofirst.mov", SPEC, start=0.0)
    import av

    with av.open(str(media_dir / "iphone_rot180_audiofirst.mov")) as c:
        raw = next(c.decode(video=0)).to_ndarray(format="rgb24")
    first = clip.frames[0]
    assert first.shape == raw.shape
    assert clip.frame_times[0] > 0  # not the same frame: compare the first frame by decoding at 0
    zero = decode_window(media_dir / "iphone_rot180_audiofirst.mov", SPEC.replace(frames=1, window_seconds=0.01))
    np.testing.assert_array_equal(zero.frames[0], raw[::-1, ::-1])


@pytest.mark.parametrize("rotation,flip,expect", [(90, None, "bottom-left"), (-90, None, "top-right"),
                                                  (180, None, "bottom-right"), (0, "hflip", "top-right"),
                                                  (0, "vflip", "bottom-left"), (90, "hflip", "bottom-right")])
def test_generated_rotation(tmp_path, rotation, flip, expect):
    """Display rotation is counter-clockwise (then the mirror): the stored top-left marker moves where a
    viewer sees it, as ffmpeg's autorotate shows it."""
    path = write_clip(tmp_path / "rot.mp4", seconds=1.0, size=(64, 32), audio=False, rotation=rotation,
                      marker=True, flip=flip)
    if flip is None:
        assert probe(path).video.rotation == rotation
    frame = decode_window(path, SPEC).frames[0]
    h, w = frame.shape[:2]
    assert (h, w) == ((64, 32) if rotation in (90, -90) else (32, 64))
    quads = {"top-left": frame[: h // 2, : w // 2], "top-right": frame[: h // 2, w // 2:],
             "bottom-left": frame[h // 2:, : w // 2], "bottom-right": frame[h // 2:, w // 2:]}
    assert max(quads, key=lambda q: quads[q].mean()) == expect


def test_vfr_frame_times_increase(media_dir):
    path = media_dir / "phone_vfr_h264_aac_mono.mp4"
    spec = SPEC.replace(frames=16, window_seconds=2.0)
    clip = decode_window(path, spec)
    assert np.all(np.diff(clip.frame_times) >= 0)
    assert len(np.unique(clip.frame_times)) >= 14  # ~10.5 fps: most targets fall in distinct frames
    targets = np.array(spec.frame_offsets())
    assert np.all(clip.frame_times <= targets + 1e-6) and np.all(targets - clip.frame_times < 0.11)


def test_no_duration_webm(media_dir):
    path = media_dir / "vp9_opus_no_duration.webm"
    assert probe(path).duration is None
    clips = list(iter_windows(path, SPEC, window=1.0))
    assert len(clips) >= 2 and all(c.has_video for c in clips)
    assert float(np.abs(clips[0].audio).max()) < 1e-3  # digital silence


def test_surround_downmix_is_mono(media_dir):
    info = probe(media_dir / "bbb_h264_aac51.mp4")
    assert info.audio.channels == 6
    clip = decode_window(media_dir / "bbb_h264_aac51.mp4", SPEC, start=1.0)
    assert clip.audio.shape == (SPEC.audio_samples,) and clip.audio.std() > 1e-3


# ---- generated clips: sync ---------------------------------------------------------------------------
def test_frames_and_audio_are_synchronised(av_clip):
    clip = decode_window(av_clip, SPEC, start=1.0)  # [1, 3): frames at 1.25, 1.75, 2.25, 2.75
    assert clip.start == 1.0 and clip.seconds == 2.0
    expected = [PALETTE[1], PALETTE[1], PALETTE[2], PALETTE[2]]
    for frame, colour in zip(clip.frames, expected):
        assert near(mean_colour(frame), colour), (mean_colour(frame), colour)
    np.testing.assert_allclose(clip.frame_times, [1.2, 1.7, 2.2, 2.7], atol=1e-6)
    rate = SPEC.sample_rate
    assert dominant_hz(clip.audio[: int(0.9 * rate)], rate) == pytest.approx(TONES[1], abs=5)
    assert dominant_hz(clip.audio[int(1.1 * rate):], rate) == pytest.approx(TONES[2], abs=5)
    # where the tone changes: within 30 ms of t = 2.0 s
    hop = rate // 100
    energy = [abs(np.fft.rfft(clip.audio[i:i + hop]))[[10, 20]] for i in range(0, len(clip.audio) - hop, hop)]
    switch = next(i for i, e in enumerate(energy) if e[1] > e[0]) * hop / rate + 1.0
    assert switch == pytest.approx(2.0, abs=0.03)


def test_end_limits_window_and_frames_spread(av_clip):
    clip = decode_window(av_clip, SPEC, start=1.0, end=2.0)
    assert clip.seconds == 1.0 and len(clip.audio) == SPEC.sample_rate
    assert all(near(mean_colour(f), PALETTE[1]) for f in clip.frames)
    assert np.all((clip.frame_times >= 1.0) & (clip.frame_times < 2.0))


def test_window_at_the_tail_is_shorter(av_clip):
    clip = decode_window(av_clip, SPEC, start=3.0)
    assert clip.seconds == pytest.approx(1.0, abs=0.03)
    assert all(near(mean_colour(f), PALETTE[3]) for f in clip.frames)
    with pytest.raises(MediaError, match="past the end"):
        decode_window(av_clip, SPEC, start=10.0)


def test_audio_path_replaces_the_track(tmp_path, av_clip):
    wav = write_clip(tmp_path / "other.wav", seconds=4.0, video=False, acodec="pcm_s16le", rate=22050)
    clip = decode_window(av_clip, SPEC, start=0.0, audio_path=wav)
    assert clip.has_video and len(clip.audio) == SPEC.audio_samples
    assert dominant_hz(clip.audio[:8000], SPEC.sample_rate) == pytest.approx(TONES[0], abs=5)


@pytest.mark.parametrize("kind", ["audio-only", "video-only"])
def test_single_track_files(tmp_path, kind):
    path = write_clip(tmp_path / "one.mp4", seconds=1.0, audio=kind == "audio-only", video=kind == "video-only")
    info = probe(path)
    clip = decode_window(path, SPEC)
    assert (info.audio is None, info.video is None) == (kind == "video-only", kind == "audio-only")
    assert (clip.has_audio, clip.has_video) == (kind == "audio-only", kind == "video-only")


@pytest.mark.parametrize("fmt,acodec,layout", [("wav", "pcm_s16le", "stereo"), ("mp3", "libmp3lame", "stereo"),
                                               ("flac", "flac", "5.1"), ("ogg", "libopus", "mono")])
def test_audio_only_formats(tmp_path, fmt, acodec, layout):
    rate = 48000 if acodec == "libopus" else 44100
    path = write_clip(tmp_path / f"a.{fmt}", seconds=2.0, video=False, acodec=acodec, rate=rate, layout=layout)
    clip = decode_window(path, SPEC, start=0.2)
    assert clip.frames is None and clip.audio.dtype == np.float32
    assert dominant_hz(clip.audio[: SPEC.sample_rate // 2], SPEC.sample_rate) == pytest.approx(TONES[0], abs=5)


@pytest.mark.parametrize("vcodec,pix_fmt,ext", [("libx264", "yuv420p10le", "mp4"), ("libvpx-vp9", "yuv444p", "webm"),
                                                ("mpeg4", "yuv420p", "avi"), ("ffv1", "bgr0", "mkv"),
                                                ("mjpeg", "yuvj422p", "avi"), ("prores", "yuv422p10le", "mov")])
def test_odd_pixel_formats(tmp_path, vcodec, pix_fmt, ext):
    path = write_clip(tmp_path / f"v.{ext}", seconds=2.0, size=(66, 34), audio=False, vcodec=vcodec, pix_fmt=pix_fmt)
    clip = decode_window(path, SPEC, start=0.5)
    assert clip.frames.shape == (4, 34, 66, 3)
    assert near(mean_colour(clip.frames[0]), PALETTE[0]) and near(mean_colour(clip.frames[-1]), PALETTE[1])


def test_raw_stream_without_timestamps(tmp_path):
    """An H.264 elementary stream has no container timestamps: times come from frame durations."""
    path = write_clip(tmp_path / "raw.h264", seconds=3.0, audio=False)
    assert probe(path).duration is None
    clip = decode_window(path, SPEC, start=1.0)
    np.testing.assert_allclose(clip.frame_times, [1.2, 1.7, 2.2, 2.7], atol=1e-6)
    assert [near(mean_colour(f), c) for f, c in zip(clip.frames, [PALETTE[1]] * 2 + [PALETTE[2]] * 2)] == [True] * 4


def test_streams_that_start_late(tmp_path):
    """MPEG-TS starts its clock at 1.4 s: time 0 is the container start, so sync still holds."""
    path = write_clip(tmp_path / "late.ts", seconds=3.0, acodec="mp2", rate=44100)
    clip = decode_window(path, SPEC, start=1.0)
    assert near(mean_colour(clip.frames[0]), PALETTE[1]) and near(mean_colour(clip.frames[-1]), PALETTE[2])
    assert dominant_hz(clip.audio[: int(0.8 * SPEC.sample_rate)], SPEC.sample_rate) == pytest.approx(TONES[1], abs=5)


# ---- streaming -------------------------------------------------------------------------------------
def test_iter_windows_count_starts_and_bounded_memory(tmp_path):
    path = write_clip(tmp_path / "long.mp4", seconds=20.0, fps=10, size=(32, 32))
    tracemalloc.start()
    starts, peak_after = [], []
    for clip in iter_windows(path, SPEC, window=2.0, hop=1.0):
        starts.append(clip.start)
        assert clip.seconds == (2.0 if clip.start < 19 else 1.0)
        assert clip.audio.shape == (round(clip.seconds * SPEC.sample_rate),) and clip.frames.shape == (4, 32, 32, 3)
        k = int(clip.start)
        assert near(mean_colour(clip.frames[0]), PALETTE[k % 4])
        assert dominant_hz(clip.audio[1000:12000], SPEC.sample_rate) == pytest.approx(TONES[k % 4], abs=5)
        peak_after.append(tracemalloc.get_traced_memory()[0])
        del clip
    tracemalloc.stop()
    assert starts == [float(s) for s in range(20)]  # the 1-s tail at 19 s holds half a window: kept
    assert max(peak_after[5:]) < 2 * max(peak_after[:5]) + 1_000_000  # no growth with the file's length


def test_video_that_ends_early_leaves_audio_only_windows(tmp_path):
    path = write_clip(tmp_path / "short_video.mkv", seconds=5.0, video_seconds=2.0)
    windows = list(iter_windows(path, SPEC, window=1.0))
    assert [w.start for w in windows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [w.has_video for w in windows] == [True, True, True, False, False]  # last frame held 1 s
    assert all(w.has_audio for w in windows)
    assert not decode_window(path, SPEC, start=3.5).has_video


def test_iter_windows_matches_decode_window(av_clip):
    for clip in iter_windows(av_clip, SPEC):
        single = decode_window(av_clip, SPEC, start=clip.start)
        np.testing.assert_array_equal(clip.frames, single.frames)
        np.testing.assert_array_equal(clip.frame_times, single.frame_times)
        assert np.abs(clip.audio - single.audio).max() < 1e-3


# ---- broken files ------------------------------------------------------------------------------------
def test_missing_empty_and_garbage(tmp_path):
    with pytest.raises(MediaError, match="not found"):
        decode_window(tmp_path / "nope.mp4", SPEC)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        probe(tmp_path / "empty.mp4")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 100)
    with pytest.raises(MediaError, match="not a readable media file"):
        decode_window(tmp_path / "text.mp4", SPEC)
    (tmp_path / "subs.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    with pytest.raises(MediaError, match="no audio or video track"):
        probe(tmp_path / "subs.srt")
    with pytest.raises(MediaError, match="not a regular file"):
        decode_window(tmp_path, SPEC)
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, np.uint8).tobytes())
    with pytest.raises(MediaError):
        decode_window(tmp_path / "noise.mp4", SPEC)


def test_truncated_mp4(tmp_path):
    """Cut at 60%: the index at the end is gone (unreadable); with +faststart the first part decodes."""
    plain = write_clip(tmp_path / "plain.mp4", seconds=5.0, size=(64, 48))
    fast = write_clip(tmp_path / "fast.mp4", seconds=5.0, size=(64, 48), options={"movflags": "+faststart"})
    for path in (plain, fast):
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(MediaError, match="not a readable media file"):
        probe(plain)
    clip = decode_window(fast, SPEC)
    assert clip.has_audio and clip.has_video and near(mean_colour(clip.frames[0]), PALETTE[0])
    with pytest.raises(MediaError, match="no frame or sample"):
        decode_window(fast, SPEC, start=4.5)


def test_bad_window_arguments(av_clip):
    with pytest.raises(MediaError):
        decode_window(av_clip, SPEC, start=-1.0)
    with pytest.raises(MediaError):
        decode_window(av_clip, SPEC, start=2.0, end=1.0)


# ---- CLI ---------------------------------------------------------------------------------------------
def test_inspect_json(media_dir):
    out = subprocess.run([sys.executable, "-m", "mmdeploy", "inspect", str(media_dir / "iphone_rot180_audiofirst.mov"),
                          "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["video"] == {"codec": "h264", "width": 568, "height": 320, "fps": 30.0, "rotation": 180,
                               "stream": 1}
    assert report["audio"]["stream"] == 0 and report["window"]["frames"] == 4
    assert report["window"]["audio_seconds"] == 2.0


def test_inspect_bad_file_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("garbage")
    out = subprocess.run([sys.executable, "-m", "mmdeploy", "inspect", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith(f"error: {bad}: ")


@pytest.mark.parametrize("seed", range(4))
def test_corrupted_bytes_never_escape_as_av_errors(tmp_path, media_dir, seed):
    """Random bytes overwritten inside real files: a clip or a MediaError, nothing else, and no hang."""
    rng = np.random.default_rng(seed)
    for name in ("cremad_1001_DFA_ANG_XX.flv", "iphone_rot180_audiofirst.mov", "tears_of_steel_vp8_vorbis_mono.webm"):
        data = bytearray((media_dir / name).read_bytes())
        at = rng.integers(len(data) // 10, len(data), 200)
        for i in at:
            data[i] = int(rng.integers(0, 256))
        path = tmp_path / name
        path.write_bytes(bytes(data))
        try:
            clip = decode_window(path, SPEC, start=0.5)
            assert clip.has_audio or clip.has_video
            for clip in iter_windows(path, SPEC):
                assert clip.has_audio or clip.has_video
        except MediaError as exc:
            assert exc.reason
