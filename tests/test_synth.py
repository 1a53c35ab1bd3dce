"""The synthetic generator: real H.264 + AAC files, stratified deterministic splits, cues that carry the label."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mmdeploy.data.manifest import read_manifest
from mmdeploy.data.synth import assign_splits, class_table, generate, render_audio, render_video
from mmdeploy.errors import ConfigError


def test_cli_writes_24_h264_aac_clips_and_a_manifest_with_three_splits(tmp_path, monkeypatch, capsys):
    import av

    from mmdeploy import cli
    from mmdeploy.media import probe

    out = tmp_path / "synth"
    monkeypatch.setattr(sys, "argv", ["mmdeploy", "data", "synth", str(out), "--clips", "24"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 0
    assert "24 clips" in capsys.readouterr().out
    files = sorted((out / "clips").glob("*.mp4"))
    assert len(files) == 24
    for f in files:
        with av.open(str(f)) as c:
            assert [s.codec_context.name for s in c.streams.video] == ["h264"]
            assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        info = probe(f)
        assert (info.video.width, info.video.height, info.audio.sample_rate, info.audio.channels) == (64, 64, 16000, 1)
    manifest = read_manifest(out / "manifest.csv")
    assert sorted(Path(it.path) for it in manifest.items) == [f.resolve() for f in files]
    assert manifest.classes == [c.name for c in class_table(8)]
    assert set(Counter(it.split for it in manifest.items)) == {"train", "val", "test"}
    assert Counter(it.label for it in manifest.items) == {c: 3 for c in manifest.classes}


def test_bad_class_count_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from mmdeploy import cli

    monkeypatch.setattr(sys, "argv", ["mmdeploy", "data", "synth", str(tmp_path), "--classes", "20"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: synth classes: 20") and err.count("\n") == 1


def test_same_seed_same_labels_splits_and_features(tmp_path, tiny_spec):
    from mmdeploy.features import file_features

    runs = [read_manifest(generate(tmp_path / name, clips=8, seed=seed, classes=4, workers=1))
            for name, seed in (("a", 3), ("b", 3), ("c", 4))]
    a, b, c = runs
    assert [(Path(i.path).name, i.label, i.split) for i in a.items] == \
           [(Path(i.path).name, i.label, i.split) for i in b.items]
    for x, y, z in zip(a.items[:2], b.items[:2], c.items[:2]):
        fa, fb, fc = (file_features(it.path, tiny_spec) for it in (x, y, z))
        assert torch.equal(fa[0], fb[0]) and torch.equal(fa[1], fb[1])
        assert not torch.equal(fa[1], fc[1])  # another seed draws other pixels


def test_one_seed_gives_byte_identical_files_in_separate_processes(tmp_path):
    """Two generations of one seed, each in its own process (one serial, one with a 2-process pool), write
    the same bytes for every clip and the same manifest; the manifest's SHA-256 column is each file's."""
    import hashlib
    import subprocess

    from mmdeploy.data.manifest import check_digests

    def run(name: str, workers: int) -> Path:
        code = ("import sys; from mmdeploy.data.synth import generate; "
                f"generate(sys.argv[1], clips=12, seed=5, classes=4, workers={workers})")
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True, timeout=300)
        return tmp_path / name

    a, b = run("a", 1), run("b", 2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert len([f for f in files_a if f.suffix == ".mp4"]) == 12
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    manifest = read_manifest(a / "manifest.csv")
    for it in manifest.items:
        assert it.sha256 == hashlib.sha256(Path(it.path).read_bytes()).hexdigest()
    assert check_digests(manifest) == []
    clip = Path(manifest.items[3].path)
    data = bytearray(clip.read_bytes())
    data[len(data) // 2] ^= 0xFF
    clip.write_bytes(bytes(data))
    (problem,) = check_digests(manifest)
    assert problem.startswith(f"{clip}: sha256 ")


def test_pairs_share_exactly_one_cue():
    table = class_table(8)
    assert len({c.name for c in table}) == 8
    for k in range(0, 8, 2):
        x, y = table[k], table[k + 1]
        if k // 2 % 2 == 0:
            assert x.sound == y.sound and x.shape != y.shape  # only video separates them
        else:
            assert x.shape == y.shape and x.sound != y.sound  # only audio separates them
    assert len({c.sound for c in table}) == 6 and len({c.shape for c in table}) == 6
    assert len(class_table(3)) == 3
    with pytest.raises(ConfigError):
        class_table(13)


def test_splits_are_stratified_70_15_15():
    labels = [i % 8 for i in range(480)]
    splits = assign_splits(labels, seed=0)
    assert Counter(splits) == {"train": 336, "val": 72, "test": 72}
    for c in range(8):
        assert Counter(s for s, lab in zip(splits, labels) if lab == c) == {"train": 42, "val": 9, "test": 9}
    small = assign_splits([i % 8 for i in range(24)], seed=0)
    assert Counter(small) == {"train": 16, "val": 4, "test": 4}
    assert all("train" in {s for s, lab in zip(small, range(24)) if lab % 8 == c} for c in range(8))
    assert assign_splits(labels, seed=0) == splits and assign_splits(labels, seed=1) != splits


@pytest.mark.parametrize("sound, hz", [("hum", 220), ("whistle", 2400), ("high", 5000)])
def test_sound_peaks_at_its_class_frequency_under_noise(sound, hz):
    for seed in range(3):
        wave = render_audio(sound, 2.0, 16000, np.random.default_rng(seed))
        assert wave.dtype == np.float32 and wave.shape == (32000,) and np.abs(wave).max() <= 1
        peak = np.argmax(np.abs(np.fft.rfft(wave))) * 16000 / len(wave)
        assert 0.9 * hz < peak < 1.1 * hz


def test_video_shape_is_bright_over_darker_clutter_and_moves():
    video = render_video("square", 6, 64, np.random.default_rng(0))
    assert video.dtype == np.uint8 and video.shape == (6, 64, 64, 3)
    bright = (video.astype(np.float32) / 255).min(axis=-1) > 0.7  # noise blurs DARK / BRIGHT a little
    area = bright.sum(axis=(1, 2))
    assert (area > 80).all()  # a square of radius >= 7 px covers ~140 px, less the occluding clutter
    assert not np.array_equal(bright[0], bright[-1])  # it moves


def test_data_verify_passes_a_fresh_set_and_names_a_changed_file(tmp_path, monkeypatch, capsys):
    from mmdeploy import cli

    out = tmp_path / "set"
    generate(out, clips=4, seed=1, classes=2, workers=1)

    def verify() -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["mmdeploy", "data", "verify", str(out / "manifest.csv")])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        captured = capsys.readouterr()
        return exit_.value.code, captured.out, captured.err

    code, stdout, _ = verify()
    assert code == 0 and "4 files match their SHA-256" in stdout
    changed = sorted((out / "clips").glob("*.mp4"))[2]
    changed.write_bytes(changed.read_bytes() + b"\0")
    code, _, stderr = verify()
    assert code == 2 and stderr.startswith(f"error: {changed}: sha256 ") and stderr.count("\n") == 1
