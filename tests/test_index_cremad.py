"""CREMA-D indexer on a small tree in the real layout: VideoFlash/*.flv (flv1 + mp3) and AudioWAV/*.wav."""
from __future__ import annotations

import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.data.cremad import CLASSES, index_cremad
from mmdeploy.data.indexing import write_index
from mmdeploy.data.manifest import read_manifest
from mmdeploy.errors import MmdeployError

REPO = Path(__file__).resolve().parents[1]
ACTORS = [f"10{n:02d}" for n in range(1, 11)]
SENTENCES = ["DFA", "IEO", "TIE"]


def write_clip(path: Path, seconds: float, fmt: str | None, vcodec: str | None, acodec: str | None,
               rate: int) -> None:
    """A tiny real media file: 32x32 frames at 10 fps and/or a mono sine."""
    import av

    from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame

    with av.open(str(path), "w", format=fmt, options=CONTAINER_OPTIONS) as box:
        vs = box.add_stream(vcodec, rate=10, options=encoder_options(vcodec)) if vcodec else None
        aus = box.add_stream(acodec, rate=rate, layout="mono", options=encoder_options(acodec)) if acodec else None
        if vs:
            vs.width = vs.height = 32
            vs.pix_fmt = "yuv420p"
            for i in range(int(seconds * 10)):
                img = np.full((32, 32, 3), i * 20 % 255, np.uint8)
                box.mux(vs.encode(video_frame(img)))
            box.mux(vs.encode())
        if aus:
            fmt_name = aus.codec_context.format.name
            step = aus.codec_context.frame_size or 1024
            wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)
            scale = {"s16": 32767, "s32": 2 ** 31 * 0.99}.get(fmt_name[:3], 1.0)
            dtype = {"s16": np.int16, "s32": np.int32}.get(fmt_name[:3], np.float32)
            for start in range(0, len(wave), step):
                frame = av.AudioFrame.from_ndarray((wave[None, start:start + step] * scale).astype(dtype),
                                                   format=fmt_name, layout="mono")
                frame.sample_rate, frame.pts = rate, start
                box.mux(aus.encode(frame))
            box.mux(aus.encode())


@pytest.fixture(scope="module")
def tree(tmp_path_factory, media_dir) -> Path:
    """10 actors x 3 clips (actor 1001 uses the real CREMA-D FLV), plus the usual faults of a real tree."""
    root = tmp_path_factory.mktemp("CREMA-D")
    (root / "VideoFlash").mkdir()
    (root / "AudioWAV").mkdir()
    tpl = root / "tpl"
    tpl.mkdir()
    write_clip(tpl / "av.flv", 1.0, "flv", "flv", "libmp3lame", 44100)
    write_clip(tpl / "video_only.flv", 1.0, "flv", "flv", None, 0)
    write_clip(tpl / "a.wav", 1.0, "wav", None, "pcm_s16le", 16000)
    for a, actor in enumerate(ACTORS):
        for s, sentence in enumerate(SENTENCES):
            stem = f"{actor}_{sentence}_{CLASSES[(a + s) % 6]}_XX"
            flv = media_dir / "cremad_1001_DFA_ANG_XX.flv" if actor == "1001" else tpl / "av.flv"
            shutil.copy(flv, root / "VideoFlash" / f"{stem}.flv")
            shutil.copy(tpl / "a.wav", root / "AudioWAV" / f"{stem}.wav")
    shutil.copy(tpl / "av.flv", root / "VideoFlash" / "1011_DFA_ANG_HI.flv")  # no WAV
    shutil.copy(tpl / "av.flv", root / "VideoFlash" / "1011_XYZ_ANG_HI.flv")  # unknown sentence code
    (root / "VideoFlash" / "1012_IEO_SAD_LO.flv").write_text(  # a zip download holds LFS stubs
        "version https://git-lfs.github.com/spec/v1\noid sha256:10dc3fd1\nsize 265922\n")
    shutil.copy(tpl / "a.wav", root / "AudioWAV" / "1012_IEO_SAD_LO.wav")
    shutil.copy(tpl / "video_only.flv", root / "VideoFlash" / "1013_TIE_FEA_MD.flv")
    shutil.copy(tpl / "a.wav", root / "AudioWAV" / "1013_TIE_FEA_MD.wav")
    shutil.copy(tpl / "av.flv", root / "VideoFlash" / "1014_ITS_DIS_XX.flv")
    with wave.open(str(root / "AudioWAV" / "1014_ITS_DIS_XX.wav"), "wb") as w:  # header, no samples
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
    shutil.copy(tpl / "av.flv", root / "VideoFlash" / "1076_MTI_SAD_XX.flv")
    shutil.copy(tpl / "a.wav", root / "AudioWAV" / "1076_MTI_SAD_XX.wav")
    (root / "VideoFlash" / "Thumbs.db").write_bytes(b"\0")
    shutil.rmtree(tpl)
    return root


def test_labels_class_order_and_wav_audio(tree, tmp_path):
    index = index_cremad(tree, seed=0)
    assert index.classes == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert len(index.items) == 31  # 30 + the video-only FLV, whose audio comes from its WAV
    for it in index.items:
        stem = Path(it.path).stem
        actor, _, emotion, _ = stem.split("_")
        assert (it.label, it.group) == (emotion, actor)
        assert it.audio_path == str(tree / "AudioWAV" / f"{stem}.wav")
    manifest = read_manifest(write_index(index, tmp_path / "m.csv", tree))
    assert manifest.classes == list(CLASSES)
    assert manifest.items == index.items


def test_speaker_independent_split_is_seeded_and_configurable(tree):
    index = index_cremad(tree, seed=3)
    actors = {s: {it.group for it in index.items if it.split == s} for s in ("train", "val", "test")}
    assert not (actors["train"] & actors["val"] or actors["train"] & actors["test"] or actors["val"] & actors["test"])
    assert [len(actors[s]) for s in ("train", "val", "test")] == [7, 2, 2]  # 11 actors: round(1.65) each
    assert index_cremad(tree, seed=3).items == index.items
    assert [it.split for it in index_cremad(tree, seed=4).items] != [it.split for it in index.items]
    halves = index_cremad(tree, seed=3, ratios=(0.5, 0.5, 0.0))
    assert {it.split for it in halves.items} == {"train", "val"}


def test_skip_report_names_each_fault(tree):
    report = index_cremad(tree).report
    assert {r: n for r, (n, _) in report.problems.items()} == {
        "missing WAV": 1, "unexpected name": 1, "unreadable FLV": 1, "empty audio": 1}
    assert "git-lfs" in report.problems["unreadable FLV"][1][0]
    assert report.notes["not an .flv file, ignored"][1] == ["Thumbs.db"]
    assert report.notes["known faulty file of the release, skipped"][1][0].startswith("1076_MTI_SAD_XX.flv")
    assert any(line.startswith("skipped 1 (missing WAV): AudioWAV/1011_DFA_ANG_HI.wav") for line in report.lines())


def test_audio_from_flv(tree):
    index = index_cremad(tree, audio="flv")
    assert all(it.audio_path is None for it in index.items)
    assert "1011_DFA_ANG_HI.flv" in {Path(it.path).name for it in index.items}  # no WAV needed now
    assert index.report.problems["no audio track"][1] == ["1013_TIE_FEA_MD.flv"]


def test_short_audio_is_skipped(tree):
    report = index_cremad(tree, min_seconds=2.0).report
    assert "shorter than 2 s" in report.problems


def test_cli_summary_and_strict(tree, tmp_path):
    cmd = [sys.executable, "-m", "mmdeploy", "data", "index", "cremad", str(tree), "--out", str(tmp_path / "c.csv")]
    done = subprocess.run(cmd + ["--seed", "1"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cremad: 31 clips, 6 classes, 11 groups" in done.stdout
    assert "warning: skipped 1 (missing WAV)" in done.stderr
    assert read_manifest(tmp_path / "c.csv").classes == list(CLASSES)
    strict = subprocess.run(cmd + ["--strict"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert strict.returncode == 2
    error = [ln for ln in strict.stderr.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "4 clips would be skipped (--strict)" in error[0]
    assert "Traceback" not in strict.stderr


def test_layout_errors_name_the_fix(tmp_path):
    with pytest.raises(MmdeployError, match="no VideoFlash/ folder"):
        index_cremad(tmp_path)
    (tmp_path / "VideoFlash").mkdir()
    with pytest.raises(MmdeployError, match="--audio flv"):
        index_cremad(tmp_path)
