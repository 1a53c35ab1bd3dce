"""UCF101 indexer on a small tree in the official layout: UCF-101/<Class>/*.avi and ucfTrainTestlist/."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.data.indexing import Probed, probe_all, sidecar_path, write_index
from mmdeploy.data.manifest import read_manifest
from mmdeploy.data.ucf101 import index_ucf101
from mmdeploy.errors import MmdeployError

CLASSES = ["ApplyEyeMakeup", "BabyCrawling", "HandstandPushups", "YoYo"]  # classInd 1..4
FILE_CLASS = {"HandstandPushups": "HandStandPushups"}  # the real file names differ in case
TRAIN_GROUPS, TEST_GROUPS = range(8, 18), range(1, 3)


def write_clip(path: Path, seconds: float, audio: bool) -> None:
    """A tiny AVI like UCF101's: MPEG-4 part 2 video 32x32 at 10 fps (+ MP3 mono)."""
    import av

    from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame

    with av.open(str(path), "w", format="avi", options=CONTAINER_OPTIONS) as box:
        vs = box.add_stream("mpeg4", rate=10, options=encoder_options("mpeg4"))
        aus = box.add_stream("libmp3lame", rate=44100, layout="mono", options=encoder_options("libmp3lame")) \
            if audio else None
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        for i in range(int(seconds * 10)):
            box.mux(vs.encode(video_frame(np.full((32, 32, 3), i * 20 % 255, np.uint8))))
        box.mux(vs.encode())
        if aus:
            fmt = aus.codec_context.format.name
            step = aus.codec_context.frame_size
            wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 44100)) / 44100)
            for start in range(0, len(wave), step):
                chunk = wave[None, start:start + step]
                chunk = (chunk * 2 ** 31 * 0.99).astype(np.int32) if fmt.startswith("s32") else chunk.astype(np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format=fmt, layout="mono")
                frame.sample_rate, frame.pts = 44100, start
                box.mux(aus.encode(frame))
            box.mux(aus.encode())


def clip_name(cls: str, group: int, clip: int) -> str:
    return f"v_{FILE_CLASS.get(cls, cls)}_g{group:02d}_c{clip:02d}.avi"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """4 classes x (10 train + 2 test groups) x 2 clips; ApplyEyeMakeup has no audio at all."""
    root = tmp_path_factory.mktemp("UCF101")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    tpl = {"audio": root / "a.avi", "silent": root / "s.avi", "short": root / "short.avi"}
    write_clip(tpl["audio"], 3.5, audio=True)
    write_clip(tpl["silent"], 3.5, audio=False)
    write_clip(tpl["short"], 1.0, audio=True)
    train, test = [], []
    for k, cls in enumerate(CLASSES, start=1):
        folder = root / "UCF-101" / cls
        folder.mkdir(parents=True)
        for group in [*TRAIN_GROUPS, *TEST_GROUPS]:
            for clip in (1, 2):
                name = clip_name(cls, group, clip)
                kind = "silent" if cls == "ApplyEyeMakeup" else "audio"
                shutil.copy(tpl[kind], folder / name)
                (train if group in TRAIN_GROUPS else test).append(f"{cls}/{name}" + (f" {k}" if group in
                                                                                      TRAIN_GROUPS else ""))
    shutil.copy(tpl["silent"], root / "UCF-101" / "BabyCrawling" / clip_name("BabyCrawling", 9, 1))
    shutil.copy(tpl["short"], root / "UCF-101" / "YoYo" / clip_name("YoYo", 10, 2))
    train += ["YoYo/v_YoYo_g18_c01.avi 4", "YoYo/clip0001.avi 4"]  # listed but absent; a foreign name
    for t in tpl.values():
        t.unlink()
    (lists / "classInd.txt").write_text("".join(f"{k} {c}\n" for k, c in enumerate(CLASSES, start=1)))
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")  # the official lists use CRLF
    (lists / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    return root


@pytest.fixture(scope="module")
def index(tree):
    return index_ucf101(tree, split=1, seed=0, workers=2)  # 96 clips: goes through the process pool


def test_audio_subset_and_class_map(index, tree, tmp_path):
    assert index.classes == ["BabyCrawling", "HandstandPushups", "YoYo"]
    classmap = index.sidecars["classmap"]
    assert classmap["map"] == {"2": 0, "3": 1, "4": 2} and classmap["dropped"] == ["ApplyEyeMakeup"]
    out = write_index(index, tmp_path / "ucf.csv", tree)
    assert json.loads(sidecar_path(out, "classmap").read_text())["classes"] == index.classes
    assert read_manifest(out).classes == index.classes
    hsp = [it for it in index.items if it.label == "HandstandPushups"]
    assert len(hsp) == 24 and all(Path(it.path).name.startswith("v_HandStandPushups_") for it in hsp)
    assert all(it.group.startswith("v_HandstandPushups_g") for it in hsp)


def test_groups_never_straddle_splits(index, tree):
    split_of: dict[str, str] = {}
    for it in index.items:
        assert split_of.setdefault(it.group, it.split) == it.split
    for cls in index.classes:
        val = {it.group for it in index.items if it.label == cls and it.split == "val"}
        test = {it.group for it in index.items if it.label == cls and it.split == "test"}
        assert len(val) == 1  # 10 % of 10 training groups
        assert test == {f"v_{cls}_g{g:02d}" for g in TEST_GROUPS}
    again = index_ucf101(tree, seed=0, workers=1)
    assert [it.split for it in again.items] == [it.split for it in index.items]


def test_report(index):
    problems = {r: (n, ex) for r, (n, ex) in index.report.problems.items()}
    assert problems["no audio track"] == (1, ["v_BabyCrawling_g09_c01.avi"])
    assert problems["shorter than 3 s"][0] == 1 and problems["shorter than 3 s"][1][0].startswith("v_YoYo_g10_c02")
    assert problems["missing clip"] == (1, ["YoYo/v_YoYo_g18_c01.avi"])
    assert problems["unexpected name"][0] == 1
    assert index.report.notes["class without audio, outside the subset"][0] == 24


def test_strict_and_layout_errors(index, tree, tmp_path):
    with pytest.raises(MmdeployError, match="4 clips would be skipped"):
        index.report.raise_if_problems(tree)
    with pytest.raises(MmdeployError, match="trainlist02.txt: split list not found"):
        index_ucf101(tree, split=2)
    with pytest.raises(MmdeployError, match="classInd.txt not found"):
        index_ucf101(tmp_path)


def crashing_probe(path: str) -> Probed:
    """Stands in for FFmpeg dying on a broken file: the worker process exits at once."""
    if path.endswith("crash.avi"):
        os._exit(1)
    return Probed(duration=5.0, audio=True, video=True)


def test_a_crashing_probe_costs_one_file_not_the_index():
    paths = [f"clip{n:03d}.avi" for n in range(60)] + ["crash.avi"] + [f"late{n:03d}.avi" for n in range(20)]
    results = probe_all(paths, workers=2, probe=crashing_probe)
    assert set(results) == set(paths)
    assert "crashed" in results["crash.avi"].error
    assert all(r.error is None and r.audio for p, r in results.items() if p != "crash.avi")


def test_the_probing_pool_spawns_and_never_forks(monkeypatch):
    """A forked copy of a multithreaded caller (Ray, torch, a server) can hang or spin in their locks: a fork of
    the test session with Ray running spun at 100 % CPU and 9 GB until killed. The pool must spawn."""
    from mmdeploy.data import indexing

    seen = []
    real = indexing.ProcessPoolExecutor

    def recording(*args, **kwargs):
        seen.append(kwargs.get("mp_context"))
        return real(*args, **kwargs)

    monkeypatch.setattr(indexing, "ProcessPoolExecutor", recording)
    paths = [f"clip{n:03d}.avi" for n in range(40)]
    assert set(probe_all(paths, workers=2, probe=crashing_probe)) == set(paths)
    assert seen and all(ctx is not None and ctx.get_start_method() == "spawn" for ctx in seen)
