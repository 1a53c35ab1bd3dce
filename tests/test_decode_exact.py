"""The fast decode path (other streams discarded, non-reference frames that no target can pick skipped)
gives bit-identical clips to the plain full decode (`DecodeOptions(reference=True)`), on every shared clip and
on generated H.264 with B-frames and b-pyramid, VP9, MPEG-2, VFR and rotated video."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mmdeploy import media
from mmdeploy.media import DecodeOptions, decode_window, iter_windows
from mmdeploy.spec import preset

SPEC = preset("synth")                    # 2-s window, 4 frames
DENSE = SPEC.replace(frames=16)           # more targets: more chances to pick a frame next to a skipped one
LAYOUTS = [(None, None), (1.0, 0.5), (3.0, 1.0), (0.7, 1.3)]  # iter_windows (window, hop); None: the spec's


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and np.array_equal(a, b)


def assert_same_clips(fast: list, full: list) -> None:
    assert len(fast) == len(full)
    for x, y in zip(fast, full):
        assert (x.start, x.seconds) == (y.start, y.seconds)
        assert same(x.frames, y.frames), f"frames differ in the window at {x.start}s"
        assert np.array_equal(x.frame_times, y.frame_times), f"frame times differ at {x.start}s"
        assert same(x.audio, y.audio), f"audio differs in the window at {x.start}s"


def both_ways(fn):
    """fn(options) with the fast path, then with the reference decode."""
    return fn(DecodeOptions()), fn(DecodeOptions(reference=True))


def check_file(path: Path, starts: list[float], layouts=LAYOUTS, specs=(SPEC, DENSE)) -> None:
    """decode_window at `starts` and iter_windows with `layouts`, for each spec, both ways."""
    for spec in specs:
        for start in starts:
            fast, full = both_ways(lambda o: [decode_window(path, spec, start, options=o)])
            assert_same_clips(fast, full)
        for window, hop in layouts:
            fast, full = both_ways(lambda o: list(iter_windows(path, spec, window=window, hop=hop, options=o)))
            assert fast, "no window decoded"
            assert_same_clips(fast, full)


# ---- every shared clip ---------------------------------------------------------------------------
def shared_clips() -> list[str]:
    """Every clip in ../shared/media (when the folder is missing, the media_dir fixture fails the test)."""
    media_dir = Path(__file__).resolve().parents[2] / "shared" / "media"
    if not media_dir.is_dir():
        return ["missing"]
    return sorted(p.name for p in media_dir.iterdir() if p.is_file() and p.suffix != ".md")


@pytest.mark.parametrize("name", shared_clips())
def test_shared_clip_fast_equals_full(media_dir, name):
    path = media_dir / name
    duration = media.probe(path).duration or 2.0
    check_file(path, [0.0, round(duration * 0.4, 3)], layouts=[], specs=(DENSE,))
    check_file(path, [], layouts=LAYOUTS[:2] if duration <= 4 else LAYOUTS[:1], specs=(SPEC,))


# ---- generated codec matrix ----------------------------------------------------------------------
def textured(i: int, size: tuple[int, int]) -> np.ndarray:
    """A moving textured gradient with a little noise: motion that encoders code with B-frames."""
    w, h = size
    rng = np.random.default_rng(i)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    texture = np.random.default_rng(0).normal(0, 30, base.shape).astype(np.float32)
    img = np.roll(base + texture, i * 3, axis=1) + rng.normal(0, 4, base.shape)
    return img.clip(0, 255).astype(np.uint8)


def write_video(path: Path, codec: str, options: dict, seconds: float = 4.0, fps: int = 25,
                size: tuple[int, int] = (160, 96), durations_ms: list[int] | None = None,
                rotation: int | None = None, audio: bool = True) -> Path:
    """Generated video (+ a mono AAC/MP2 tone). durations_ms: variable frame durations, cycled (VFR)."""
    import av

    from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame

    with av.open(str(path), "w", options=CONTAINER_OPTIONS) as out:
        vs = out.add_stream(codec, rate=fps, options=encoder_options(codec, options))
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.time_base = vs.codec_context.time_base = Fraction(1, 1000) if durations_ms else Fraction(1, fps)
        if rotation is not None:
            vs.set_display_rotation(rotation)
        acodec = {".mpg": "mp2", ".webm": "libopus"}.get(path.suffix, "aac")
        aus = out.add_stream(acodec, rate=16000, layout="mono", options=encoder_options(acodec)) if audio else None
        pts, i, a = 0, 0, 0
        while (pts / 1000 if durations_ms else i / fps) < seconds:
            frame = video_frame(textured(i, size))
            frame.pts, frame.time_base = (pts, Fraction(1, 1000)) if durations_ms else (i, Fraction(1, fps))
            out.mux(vs.encode(frame))
            pts += durations_ms[i % len(durations_ms)] if durations_ms else 0
            i += 1
            while aus is not None and a < (pts / 1000 if durations_ms else i / fps) * 16000:
                t = np.arange(a, a + 1152) / 16000
                af = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts = 16000, a
                out.mux(aus.encode(af))
                a += 1152
        out.mux(vs.encode(None))
        if aus is not None:
            out.mux(aus.encode(None))
    return path


X264_B = {"preset": "veryfast", "x264-params": "bframes=3:b-pyramid=normal:keyint=40"}
MATRIX = {
    "h264_bpyramid.mp4": dict(codec="libx264", options=X264_B),
    "h264_bpyramid.mkv": dict(codec="libx264", options={"preset": "veryfast",
                                                        "x264-params": "bframes=5:b-pyramid=strict:b-adapt=0"}),
    "h264_vfr.mp4": dict(codec="libx264", options=X264_B, durations_ms=[40, 80, 120, 40, 60]),
    "h264_rot90.mp4": dict(codec="libx264", options=X264_B, rotation=90),
    "h264_noaudio.mp4": dict(codec="libx264", options=X264_B, audio=False, fps=30),
    "vp9.webm": dict(codec="libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "16",
                                                  "auto-alt-ref": "1"}),
    "mpeg2_bframes.mpg": dict(codec="mpeg2video", options={"bf": "2", "g": "12"}),
    "mpeg2_bframes.ts": dict(codec="mpeg2video", options={"bf": "2", "g": "12"}),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exact")
    return {name: write_video(root / name, **kw) for name, kw in MATRIX.items()}


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_generated_fast_equals_full(generated, name):
    check_file(generated[name], [0.0, 0.9, 1.37, 2.5])


@pytest.mark.parametrize("name", ["h264_bpyramid.mp4", "h264_vfr.mp4", "mpeg2_bframes.mpg"])
def test_fast_path_decodes_fewer_frames(generated, name):
    """The equality above is not vacuous: the fast path really leaves frames undecoded."""
    import av

    path = generated[name]
    with av.open(str(path)) as container:
        stream = media.source.pick(container, "video").index

    def count(options) -> int:
        wanted = media.skip.window_targets_in(lambda k: [k * 2.0 + o for o in SPEC.frame_offsets()], 2.0, 2.0)
        with media.source.Source(path) as src:
            return sum(1 for _ in media.demux.decoded(src, stream, 0.0, 0.05, wanted=wanted,
                                                      reference=options.reference))

    fast, full = both_ways(count)
    assert fast < full * 0.85, (fast, full)


def test_reference_switch_is_scoped(monkeypatch):
    """The switch is an argument of each decode (read from MMDEPLOY_REFERENCE_DECODE once, by the settings),
    never process state: setting the variable later changes nothing for a call made without it."""
    from mmdeploy.pipeline import decode_options
    from mmdeploy.settings import Settings

    monkeypatch.delenv("MMDEPLOY_REFERENCE_DECODE", raising=False)
    assert decode_options(Settings.from_env()) == DecodeOptions()
    monkeypatch.setenv("MMDEPLOY_REFERENCE_DECODE", "1")
    assert decode_options(Settings.from_env()) == DecodeOptions(reference=True)
    assert media.decode.FAST == DecodeOptions() and not DecodeOptions().reference
