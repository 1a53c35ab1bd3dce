"""UCF101 tree -> manifest of the audio subset: official split k, clips with an audio track, group-level val.

Layout: UCF-101/<Class>/v_<Class>_gXX_cYY.avi (any folder under ROOT) and ucfTrainTestlist/ with
classInd.txt, trainlist0k.txt, testlist0k.txt. Many UCF101 clips have no audio stream. Each listed clip
is probed (headers only, in a process pool); the audio subset is the classes that have at least one clip
with an audio track among the clips of the chosen split's lists (train + test = all 13,320 clips), kept in
classInd order and renumbered from 0 (51 classes on the real data, as in the MLB paper). The map
original classInd index -> new index is stored beside the manifest in `<stem>.classmap.json`.
Validation: ~10 % of each class's training groups (v_<Class>_gXX: the same actor/scene), seeded, so no
group straddles two splits. Files are found by name, whatever the case (the lists say HandstandPushups,
the files v_HandStandPushups_*).
"""
from __future__ import annotations

import re
from pathlib import Path

from mmdeploy.data.indexing import Index, Report, find_file, probe_all, require_dir, split_groups, walk_files
from mmdeploy.data.manifest import Item
from mmdeploy.errors import ConfigError

NAME = re.compile(r"^v_([A-Za-z]+)_g(\d+)_c(\d+)\.avi$", re.IGNORECASE)
LAYOUT = "the UCF101 layout ROOT/UCF-101/<Class>/*.avi and ROOT/ucfTrainTestlist/{classInd,trainlist0k,testlist0k}.txt"
SPLITS = (1, 2, 3)
VAL_FRACTION = 0.1


def read_class_index(path: Path) -> list[str]:
    """classInd.txt (`1 ApplyEyeMakeup` per line) -> names in index order (index = position + 1)."""
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[0].isdigit():
            raise ConfigError(f"{path}:{n}: expected `<index> <ClassName>`, got {line.strip()!r}")
        names[int(fields[0])] = fields[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ConfigError(f"{path}: class indices must run 1..N without gaps")
    return [names[i] for i in range(1, len(names) + 1)]


def read_split_list(path: Path) -> list[tuple[str, int]]:
    """trainlist0k/testlist0k lines (`Class/v_Class_gXX_cYY.avi [label]`) -> (entry, line number)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if fields:
            rows.append((fields[0].replace("\\", "/"), n))
    return rows


def index_ucf101(root: str | Path, *, split: int = 1, seed: int = 0, min_seconds: float = 3.0,
                 workers: int | None = None) -> Index:
    root = require_dir(root, LAYOUT)
    if split not in SPLITS:
        raise ConfigError(f"--split {split}: UCF101 has official splits 1, 2 and 3")
    class_file = find_file(root, "classInd.txt")
    if class_file is None:
        raise ConfigError(f"{root}: classInd.txt not found; expected {LAYOUT}")
    lists = {s: class_file.parent / f"{s}list0{split}.txt" for s in ("train", "test")}
    for path in lists.values():
        if not path.is_file():
            raise ConfigError(f"{path}: split list not found; expected {LAYOUT}")
    names = read_class_index(class_file)
    canonical = {n.lower(): n for n in names}
    files = {p.name.lower(): p for p in walk_files(root, ".avi")}
    if not files:
        raise ConfigError(f"{root}: no .avi clips found; expected {LAYOUT}")

    report = Report()
    entries: list[tuple[str, Path, str, str]] = []  # split, file, class, group
    for part, path in lists.items():
        for entry, n in read_split_list(path):
            base = entry.rsplit("/", 1)[-1]
            m = NAME.match(base)
            cls = canonical.get(m[1].lower()) if m else None
            if cls is None:
                report.problem("unexpected name", f"{path.name}:{n} {entry}")
                continue
            file = files.get(base.lower())
            if file is None:
                report.problem("missing clip", entry)
                continue
            entries.append((part, file, cls, f"v_{cls}_g{m[2]}"))

    probed = probe_all([e[1] for e in entries], workers)
    audio_classes = {cls for _, file, cls, _ in entries if probed[str(file)].audio}
    classes = [c for c in names if c in audio_classes]
    kept: list[tuple[str, Path, str, str]] = []
    for part, file, cls, group in entries:
        info = probed[str(file)]
        if info.error:
            report.problem("unreadable clip", f"{file.name}: {info.error}")
        elif cls not in audio_classes:
            report.note("class without audio, outside the subset", file.name)
        elif not info.audio:
            report.problem("no audio track", file.name)
        elif not info.video:
            report.problem("no video track", file.name)
        elif info.duration is not None and info.duration < min_seconds:
            report.problem(f"shorter than {min_seconds:g} s", f"{file.name} ({info.duration:.2f} s)")
        else:
            kept.append((part, file, cls, group))

    val_groups: set[str] = set()
    for cls in classes:
        groups = {g for part, _, c, g in kept if part == "train" and c == cls}
        assigned = split_groups(groups, (1 - VAL_FRACTION, VAL_FRACTION, 0.0), seed=f"{seed}:{cls}")
        val_groups.update(g for g, s in assigned.items() if s == "val")
    items = [Item(path=str(file), label=cls, split="val" if group in val_groups else part, group=group)
             for part, file, cls, group in kept]
    classmap = {
        "rule": "classes with at least one clip that has an audio track in the official lists of this split "
                "(train + test), in classInd order, renumbered from 0",
        "split": split,
        "class_index": class_file.name,
        "map": {str(names.index(c) + 1): i for i, c in enumerate(classes)},
        "classes": classes,
        "dropped": [c for c in names if c not in audio_classes],
    }
    return Index(items=items, classes=classes, report=report, sidecars={"classmap": classmap})
