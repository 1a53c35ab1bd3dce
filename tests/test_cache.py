"""Feature cache: hits skip decoding, spec/file changes miss, entries are whole .npy files, bad files are reported."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from mmdeploy import features
from mmdeploy.data.cache import FeatureCache, warm_cache
from mmdeploy.data.manifest import Item, read_manifest
from mmdeploy.data.synth import generate


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Item]:
    return read_manifest(generate(tmp_path_factory.mktemp("synth"), clips=4, seed=0, classes=2, workers=1)).items


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """Count decodes: every call of features.file_features is recorded, then runs for real."""
    seen: list[str] = []
    real = features.file_features

    def counting(path, spec, **kw):
        seen.append(str(path))
        return real(path, spec, **kw)

    monkeypatch.setattr(features, "file_features", counting)
    return seen


def test_second_get_is_a_hit_without_decoding(tmp_path, tiny_spec, clips, calls):
    cache = FeatureCache(tmp_path, tiny_spec)
    audio, video = cache.get(clips[0])
    assert audio.shape == (1, *tiny_spec.spectrogram_shape) and video.shape == tiny_spec.frames_shape
    assert audio.dtype == video.dtype == torch.float32
    again = FeatureCache(tmp_path, tiny_spec).get(clips[0])  # a fresh object: the hit is on disk
    assert len(calls) == 1
    assert torch.equal(again[0], audio) and torch.equal(again[1], video)
    entry = cache.entry(clips[0])
    assert sorted(p.name for p in entry.iterdir()) == ["audio.npy", "meta.json", "video.npy"]
    np.load(entry / "audio.npy", allow_pickle=False)
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_spec_change_misses(tmp_path, tiny_spec, clips, calls):
    FeatureCache(tmp_path, tiny_spec).get(clips[0])
    other = tiny_spec.replace(n_mels=16)
    audio, _ = FeatureCache(tmp_path, other).get(clips[0])
    assert len(calls) == 2 and audio.shape[1] == 16
    assert {p.name for p in tmp_path.iterdir()} == {tiny_spec.digest(), other.digest()}


def test_changed_file_misses(tmp_path, tiny_spec, clips, calls):
    path = tmp_path / "clip.mp4"
    shutil.copy(clips[0].path, path)
    item = Item(path=str(path), label=clips[0].label, split="train")
    cache = FeatureCache(tmp_path / "cache", tiny_spec)
    first = cache.get(item)
    shutil.copy(clips[1].path, path)  # new content (other clip)
    second = cache.get(item)
    assert len(calls) == 2 and not torch.equal(first[1], second[1])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, touched
    cache.get(item)
    assert len(calls) == 3
    cache.get(item)
    assert len(calls) == 3


def test_window_is_part_of_the_key(tmp_path, tiny_spec, clips, calls):
    cache = FeatureCache(tmp_path, tiny_spec)
    cache.get(clips[0])
    cache.get(Item(path=clips[0].path, label=clips[0].label, split="train", start=0.5, end=1.5))
    assert len(calls) == 2


def test_absent_modality_is_stored_and_returned_as_none(tmp_path, tiny_spec, clips, monkeypatch):
    video = torch.rand(tiny_spec.frames_shape)
    monkeypatch.setattr(features, "file_features", lambda *a, **k: (None, video))
    cache = FeatureCache(tmp_path, tiny_spec)
    assert cache.get(clips[0])[0] is None
    assert json.loads((cache.entry(clips[0]) / "meta.json").read_text()) == {"audio": False, "video": True}
    monkeypatch.setattr(features, "file_features", lambda *a, **k: pytest.fail("decoded on a hit"))
    audio, again = FeatureCache(tmp_path, tiny_spec).get(clips[0])
    assert audio is None and torch.equal(again, video)


def test_damaged_entry_and_leftover_temp_folder_are_recomputed(tmp_path, tiny_spec, clips, calls):
    cache = FeatureCache(tmp_path, tiny_spec)
    good = cache.get(clips[0])
    entry = cache.entry(clips[0])
    (entry.parent / f".tmp-{entry.name}-999-dead").mkdir()  # what a killed worker leaves behind
    (entry / "video.npy").write_bytes(b"\x93NUMPY")  # truncated
    again = cache.get(clips[0])
    assert len(calls) == 2 and torch.equal(again[1], good[1])
    assert torch.equal(FeatureCache(tmp_path, tiny_spec).get(clips[0])[1], good[1]) and len(calls) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_warm_cache_fills_entries_and_reports_bad_files(tmp_path, tiny_spec, clips, workers):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    bad = [Item(path=str(tmp_path / "missing.mp4"), label="x", split="train"),
           Item(path=str(junk), label="x", split="train")]
    failures = warm_cache(clips[:2] + bad, tiny_spec, tmp_path / "cache", workers=workers)
    assert [it for it, _ in failures] == bad
    assert "missing.mp4" in failures[0][1] and "junk.mp4" in failures[1][1]
    cache = FeatureCache(tmp_path / "cache", tiny_spec)
    assert all(cache.has(it) for it in clips[:2])
    assert warm_cache(clips[:2], tiny_spec, tmp_path / "cache", workers=workers) == []


def test_warm_cache_on_ray_fills_the_same_entries(ray_local, tmp_path, tiny_spec, clips):
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    bad = [Item(path=str(junk), label="x", split="train")]
    failures = warm_cache(clips[:2] + bad, tiny_spec, tmp_path / "ray", engine="ray")
    assert [it for it, _ in failures] == bad and "junk.mp4" in failures[0][1]
    on_ray, here = FeatureCache(tmp_path / "ray", tiny_spec), FeatureCache(tmp_path / "local", tiny_spec)
    for item in clips[:2]:
        assert on_ray.has(item)
        assert all(torch.equal(a, b) for a, b in zip(on_ray.get(item), here.get(item)))
    assert warm_cache(clips[:2], tiny_spec, tmp_path / "ray", engine="ray") == []


def test_cli_cache_counts_cached_and_skipped_clips(tmp_path, clips, monkeypatch, capsys):
    import sys

    from mmdeploy import cli
    from mmdeploy.data.manifest import write_manifest

    manifest = write_manifest(tmp_path / "m.csv", clips[:2] + [Item(str(tmp_path / "gone.mp4"), clips[0].label,
                                                                     "test")])
    monkeypatch.setattr(sys, "argv", ["mmdeploy", "data", "cache", str(manifest), "--cache", str(tmp_path / "c"),
                                      "--workers", "1"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    assert exit_.value.code == 0
    assert "2 of 3 clips cached" in out.out and "gone.mp4" in out.err
