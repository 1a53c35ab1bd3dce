"""The manifest: one CSV row per clip, everything a loader needs, so training never re-parses a raw tree.

Columns: path, label, split (train|val|test), start, end (seconds of the window; end empty = from start
for one spec window), group (actor, YouTube id or v_Class_gXX group; used for leakage checks),
audio_path (optional separate audio file, e.g. CREMA-D AudioWAV; empty = audio from `path`),
sha256 (optional hex digest of the file at `path`, written by the synthetic generator so a user can check
that a set is byte for byte the documented one: `check_digests`).
Paths are stored relative to the manifest's folder when they lie under it, and resolved on read.
The class order (index = position) is stored beside it in `<manifest>.classes.txt`, one name per line;
without that file the sorted unique labels are used.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from mmdeploy.errors import ConfigError

COLUMNS = ("path", "label", "split", "start", "end", "group", "audio_path", "sha256")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    path: str
    label: str
    split: str
    start: float = 0.0
    end: float | None = None
    group: str = ""
    audio_path: str | None = None
    sha256: str = ""


@dataclass(frozen=True)
class Manifest:
    path: Path
    items: list[Item]
    classes: list[str]

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]

    def label_index(self, label: str) -> int:
        return self.classes.index(label)


def classes_path(manifest: Path) -> Path:
    manifest = Path(manifest)
    return manifest.with_name(manifest.name + ".classes.txt") if manifest.suffix != ".csv" \
        else manifest.with_suffix(".classes.txt")


def write_manifest(path: str | Path, items: list[Item], classes: list[str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    classes = list(classes) if classes is not None else sorted({it.label for it in items})
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for it in items:
            w.writerow([_rel(it.path, root), it.label, it.split, f"{it.start:g}",
                        "" if it.end is None else f"{it.end:g}", it.group,
                        "" if it.audio_path is None else _rel(it.audio_path, root), it.sha256])
    tmp.replace(path)
    classes_path(path).write_text("".join(c + "\n" for c in classes))
    return path


def read_manifest(path: str | Path) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: manifest not found; make one with `mmdeploy data synth` or "
                          "`mmdeploy data index DATASET ROOT --out MANIFEST`")
    root = path.parent.resolve()
    items: list[Item] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("path", "label", "split") if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}: manifest lacks column {missing[0]!r}; columns are {', '.join(COLUMNS)}")
        for n, row in enumerate(reader, start=2):
            split = row["split"].strip()
            if split not in SPLITS:
                raise ConfigError(f"{path}:{n}: split {split!r} is not one of {', '.join(SPLITS)}")
            try:
                start = float(row.get("start") or 0.0)
                end = float(row["end"]) if row.get("end") else None
            except ValueError:
                raise ConfigError(f"{path}:{n}: start/end must be seconds") from None
            audio = row.get("audio_path") or None
            items.append(Item(path=str(root / row["path"]), label=row["label"], split=split, start=start,
                              end=end, group=row.get("group") or "",
                              audio_path=str(root / audio) if audio else None,
                              sha256=(row.get("sha256") or "").strip()))
    cp = classes_path(path)
    if cp.is_file():
        classes = [ln.strip() for ln in cp.read_text().splitlines() if ln.strip()]
        unknown = sorted({it.label for it in items} - set(classes))
        if unknown:
            raise ConfigError(f"{path}: label {unknown[0]!r} is not in {cp.name}")
    else:
        classes = sorted({it.label for it in items})
    return Manifest(path=path, items=items, classes=classes)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_digests(manifest: Manifest) -> list[str]:
    """One line per item whose file is missing or whose bytes differ from its recorded sha256 (items with
    no recorded digest are not checked); empty when the set is the one the manifest describes."""
    problems = []
    for it in manifest.items:
        if not it.sha256:
            continue
        if not Path(it.path).is_file():
            problems.append(f"{it.path}: missing")
        elif (actual := file_sha256(it.path)) != it.sha256:
            problems.append(f"{it.path}: sha256 {actual[:16]}... differs from the manifest's {it.sha256[:16]}...")
    return problems


def _rel(p: str, root: Path) -> str:
    rp = Path(p).resolve()
    try:
        return str(rp.relative_to(root))
    except ValueError:
        return str(rp)
