"""AVE indexer on a small tree in the release layout: AVE/<VideoID>.mp4, Annotations.txt, {train,val,test}Set.txt."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.data.ave import CLASSES, index_ave
from mmdeploy.data.indexing import write_index
from mmdeploy.data.manifest import read_manifest
from mmdeploy.errors import MmdeployError

REPO = Path(__file__).resolve().parents[1]
HEADER = "Category&VideoID&Quality&StartTime&EndTime"
TRAIN = [HEADER,
         "Church bell&RUhOCu3LNXM&good&0&2",
         "Bark&a1b2C3d4e5F&good&1&3",
         "Bark&a1b2C3d4e5F&good&1&3",                     # listed twice in the real lists too
         "Race car, auto racing&Zz9_-xYwVuT&good&0&10",  # event end past the 3 s file: clipped
         "Dog&Q1w2E3r4T5y&good&0&2",                      # not one of the 28 classes
         "Horse&missingVid01&good&0&3",                   # no such video
         "Goat&NoAudioTrk1&good&0&2",                     # video without audio
         "Church bell&VWi2ENBuTbw&good&0&0",              # empty window, as in the real Annotations.txt
         "Truck&LateStart01&good&5&8"]                    # event after the end of the 3 s file
VAL = ["Mandolin&mAnDoLiN001&good&0&2", "Bark&a1b2C3d4e5F&good&0&1"]  # second line: already in train
TEST = ["Baby cry, infant cry&bAbYcRy0001&bad&1&2"]


def write_clip(path: Path, seconds: float, audio: bool) -> None:
    """A tiny H.264 (+ AAC) MP4: 32x32 at 10 fps, 16 kHz mono sine."""
    import av

    from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame

    with av.open(str(path), "w", options=CONTAINER_OPTIONS) as box:
        vs = box.add_stream("libx264", rate=10, options=encoder_options("libx264"))
        aus = box.add_stream("aac", rate=16000, layout="mono", options=encoder_options("aac")) if audio else None
        vs.width = vs.height = 32
        vs.pix_fmt = "yuv420p"
        for i in range(int(seconds * 10)):
            box.mux(vs.encode(video_frame(np.full((32, 32, 3), i * 20 % 255, np.uint8))))
        box.mux(vs.encode())
        if aus:
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000)).astype(np.float32)
            for start in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, start:start + 1024], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                box.mux(aus.encode(frame))
            box.mux(aus.encode())


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("AVE_Dataset")
    (root / "AVE").mkdir()
    write_clip(root / "with_audio.mp4", 3.0, audio=True)
    write_clip(root / "AVE" / "NoAudioTrk1.mp4", 3.0, audio=False)
    for line in TRAIN[1:] + VAL + TEST:
        vid = line.split("&")[1]
        if vid not in ("missingVid01", "NoAudioTrk1"):
            shutil.copy(root / "with_audio.mp4", root / "AVE" / f"{vid}.mp4")
    (root / "with_audio.mp4").unlink()
    for name, lines in (("trainSet.txt", TRAIN), ("valSet.txt", VAL), ("testSet.txt", TEST)):
        (root / name).write_text("\n".join(lines) + "\n")
    (root / "Annotations.txt").write_text("\n".join(TRAIN + VAL + TEST + ["Bus&NotInSplit1&good&0&1"]) + "\n")
    return root


def test_classes_windows_and_splits(tree, tmp_path):
    index = index_ave(tree)
    assert index.classes == list(CLASSES) and len(CLASSES) == 28
    assert (CLASSES[0], CLASSES[19], CLASSES[27]) == ("Church bell", "Baby cry, infant cry", "Mandolin")
    rows = {it.group: (it.label, it.split, it.start, it.end) for it in index.items}
    assert rows["RUhOCu3LNXM"] == ("Church bell", "train", 0.0, 2.0)
    assert rows["a1b2C3d4e5F"] == ("Bark", "train", 1.0, 3.0)  # kept once, in its first split
    assert rows["mAnDoLiN001"] == ("Mandolin", "val", 0.0, 2.0)
    assert rows["bAbYcRy0001"] == ("Baby cry, infant cry", "test", 1.0, 2.0)
    label, split, start, end = rows["Zz9_-xYwVuT"]
    assert (label, split, start) == ("Race car, auto racing", "train", 0.0) and 2.9 < end < 3.2
    assert len(index.items) == 5
    assert all(Path(it.path) == tree / "AVE" / f"{it.group}.mp4" for it in index.items)
    manifest = read_manifest(write_index(index, tmp_path / "ave.csv", tree))  # commas in names survive the CSV
    assert manifest.items == index.items and manifest.classes == list(CLASSES)


def test_report_lists_every_fault(tree):
    report = index_ave(tree).report
    assert {r: n for r, (n, _) in report.problems.items()} == {
        "unknown category": 1, "missing video": 1, "no audio track": 1, "empty event window": 1,
        "event starts after the end of the file": 1}
    assert set(report.notes) == {"video listed again, later line dropped", "video also listed in train, dropped",
                                 "annotated but in no split list, ignored", "event end clipped to the file's end"}


def test_videos_directly_under_root(tree, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(tree / "AVE", flat)
    for name in ("trainSet.txt", "valSet.txt", "testSet.txt"):
        shutil.copy(tree / name, flat / name)
    pairs = [(it.group, it.split) for it in index_ave(tree).items]
    assert [(it.group, it.split) for it in index_ave(flat).items] == pairs


def test_missing_split_list_is_an_error(tmp_path):
    (tmp_path / "x.mp4").write_bytes(b"")
    with pytest.raises(MmdeployError, match="trainSet.txt not found"):
        index_ave(tmp_path)


def test_cli_strict(tree, tmp_path):
    cmd = [sys.executable, "-m", "mmdeploy", "data", "index", "ave", str(tree), "--out", str(tmp_path / "a.csv")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and "ave: 5 clips, 28 classes" in done.stdout, done.stderr
    strict = subprocess.run(cmd + ["--strict"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert strict.returncode == 2 and strict.stderr.count("\n") == 1
    assert strict.stderr.startswith("error:") and "5 clips would be skipped" in strict.stderr
