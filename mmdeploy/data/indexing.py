"""Shared helpers for the dataset indexers: the skip report, parallel probing, splits by group.

An indexer turns a raw dataset tree into an `Index` (manifest items, class order, a report of what was
skipped and why, and side files such as a class map). Problems (missing or unreadable files, clips
without a needed track, too short, unexpected names) are skipped and reported; `--strict` turns them into
one error. Notes are expected quirks of the real data (duplicate lines, classes outside a subset) that
are reported but never fatal.
"""
from __future__ import annotations

import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterable

from mmdeploy.data.manifest import Item, write_manifest
from mmdeploy.errors import ConfigError, MmdeployError
from mmdeploy.settings import cpu_count

EXAMPLES = 3
POOL_MIN_FILES = 32
LFS_HEADER = b"version https://git-lfs"


@dataclass
class Report:
    """What was skipped (problems) or only remarked (notes): reason -> count and first examples."""

    problems: dict[str, list] = field(default_factory=dict)
    notes: dict[str, list] = field(default_factory=dict)

    def problem(self, reason: str, example: str) -> None:
        _add(self.problems, reason, example)

    def note(self, reason: str, example: str) -> None:
        _add(self.notes, reason, example)

    @property
    def skipped(self) -> int:
        return sum(n for n, _ in self.problems.values())

    def lines(self) -> list[str]:
        """One line per reason: `skipped 3 (missing WAV): a, b, c` / `note 2 (duplicate line): ...`."""
        out = []
        for kind, table in (("skipped", self.problems), ("note", self.notes)):
            for reason, (n, examples) in table.items():
                more = ", ..." if n > len(examples) else ""
                out.append(f"{kind} {n} ({reason}): {', '.join(examples)}{more}")
        return out

    def raise_if_problems(self, root: Path) -> None:
        """--strict: every problem becomes one error line naming the first reason and example."""
        if self.problems:
            reason, (n, examples) = next(iter(self.problems.items()))
            others = self.skipped - n
            tail = f" (and {others} more problems)" if others else ""
            raise MmdeployError(f"{root}: {self.skipped} clips would be skipped (--strict): {n} {reason}, "
                                f"e.g. {examples[0]}{tail}; fix the tree or drop --strict to skip them")


def _add(table: dict[str, list], reason: str, example: str) -> None:
    entry = table.setdefault(reason, [0, []])
    entry[0] += 1
    if len(entry[1]) < EXAMPLES:
        entry[1].append(example)


@dataclass
class Index:
    """An indexed dataset: manifest items, class order, the report, and JSON side files by suffix."""

    items: list[Item]
    classes: list[str]
    report: Report
    sidecars: dict[str, dict] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {s: sum(it.split == s for it in self.items) for s in ("train", "val", "test")}


def write_index(index: Index, out: str | Path, root: Path) -> Path:
    """Write the manifest, its class order and side files (`<stem>.<suffix>.json`); refuse an empty one."""
    if not index.items:
        first = index.report.lines()[:1]
        raise ConfigError(f"{root}: no usable clips found" + (f" ({first[0]})" if first else "")
                          + "; check the dataset layout described in training/README.md")
    out = Path(out)
    write_manifest(out, index.items, index.classes)
    for suffix, payload in index.sidecars.items():
        sidecar_path(out, suffix).write_text(json.dumps(payload, indent=1) + "\n")
    return out


def sidecar_path(manifest: str | Path, suffix: str) -> Path:
    manifest = Path(manifest)
    stem = manifest.stem if manifest.suffix == ".csv" else manifest.name
    return manifest.with_name(f"{stem}.{suffix}.json")


# ---- probing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Probed:
    """The few facts an indexer needs about a file; `error` set when it cannot be read as media."""

    duration: float | None = None
    audio: bool = False
    video: bool = False
    error: str | None = None


def probe_file(path: str) -> Probed:
    """Stream headers only (mmdeploy.media.probe); never raises: errors become `Probed.error`."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return Probed(error="empty file")
        if size < 1024:
            with open(path, "rb") as fh:
                if fh.read(len(LFS_HEADER)) == LFS_HEADER:
                    return Probed(error="git-lfs pointer, not media (run `git lfs pull`)")
        if path.lower().endswith(".wav"):
            pcm = _wav_header(path)
            if pcm is not None:
                return pcm
        from mmdeploy.media import probe

        info = probe(path)
    except MmdeployError as exc:
        return Probed(error=getattr(exc, "reason", None) or str(exc))
    except Exception as exc:  # a broken file must never stop a 10,000-file index
        return Probed(error=f"{type(exc).__name__}: {exc}")
    return Probed(duration=info.duration, audio=info.audio is not None, video=info.video is not None)


def _wav_header(path: str) -> Probed | None:
    """A PCM WAV's length from its header (stdlib, ~50x faster than opening it with FFmpeg); None otherwise."""
    import wave

    try:
        with wave.open(path, "rb") as w:
            frames, rate = w.getnframes(), w.getframerate()
    except (wave.Error, EOFError):
        return None
    return Probed(duration=frames / rate if rate else None, audio=rate > 0)


def probe_all(paths: Iterable[str | Path], workers: int | None = None,
              probe: Callable[[str], Probed] = probe_file) -> dict[str, Probed]:
    """Probe many files, in a process pool when there are enough of them.

    A file that kills its worker process (a crash inside FFmpeg) is found by bisection and reported
    as unreadable; every other file is still probed.
    """
    paths = [str(p) for p in paths]
    workers = workers or cpu_count()
    if workers == 1 or len(paths) < POOL_MIN_FILES:
        return {p: probe(p) for p in paths}
    return _pooled(paths, workers, probe)


def _pooled(paths: list[str], workers: int, probe: Callable[[str], Probed]) -> dict[str, Probed]:
    chunk = max(1, min(64, len(paths) // (workers * 8)))
    out: dict[str, Probed] = {}
    lost: list[str] = []
    # spawn, never fork: the caller may hold threads (Ray's, torch's, a server's), and a forked copy of a
    # multithreaded process can hang or spin in their locks (a forked pytest with Ray running spun at 100 %
    # CPU and 9 GB here); synth and the feature cache spawn theirs too
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        batches = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
        futures = [(batch, pool.submit(_probe_batch, probe, batch)) for batch in batches]
        for batch, future in futures:
            try:
                out.update(zip(batch, future.result()))
            except BrokenProcessPool:
                lost.extend(batch)
    if len(lost) == 1:
        out[lost[0]] = Probed(error="probing crashed its process (a fault inside FFmpeg)")
    elif lost:
        half = len(lost) // 2
        out.update(_pooled(lost[:half], workers, probe))
        out.update(_pooled(lost[half:], workers, probe))
    return out


def _probe_batch(probe: Callable[[str], Probed], batch: list[str]) -> list[Probed]:
    return [probe(p) for p in batch]


# ---- splits -------------------------------------------------------------------------------------
def parse_ratios(text: str) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> train/val/test fractions summing to 1."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or values[0] <= 0:
        raise ConfigError(f"--ratios {text!r}: give three fractions train,val,test (train > 0), e.g. 0.7,0.15,0.15")
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def split_groups(groups: Iterable[str], ratios: tuple[float, float, float], seed: int | str) -> dict[str, str]:
    """Assign whole groups (actors, video groups) to train/val/test: seeded shuffle of the sorted groups.

    val and test get round(n * ratio) groups (at least one when their ratio > 0 and there are enough
    groups), train the rest; 91 CREMA-D actors at 0.7/0.15/0.15 -> 63/14/14.
    """
    names = sorted(set(groups))
    random.Random(seed).shuffle(names)
    n = len(names)
    sizes = [int(n * r + 0.5) for r in ratios[1:]]
    enough = n >= 1 + sum(r > 0 for r in ratios[1:])
    sizes = [max(s, 1) if r > 0 and enough else s for s, r in zip(sizes, ratios[1:])]
    while sum(sizes) >= n and sum(sizes) > 0:  # keep at least one group for training
        sizes[sizes.index(max(sizes))] -= 1
    n_val, n_test = sizes
    out = {g: "val" for g in names[:n_val]}
    out.update({g: "test" for g in names[n_val:n_val + n_test]})
    out.update({g: "train" for g in names[n_val + n_test:]})
    return out


# ---- finding things in a tree ----------------------------------------------------------------------
def find_file(root: Path, name: str, max_depth: int = 3) -> Path | None:
    """The shallowest file called `name` under root (breadth first, sorted), or None."""
    level = [root]
    for _ in range(max_depth + 1):
        nxt = []
        for folder in level:
            if (folder / name).is_file():
                return folder / name
            try:
                nxt.extend(sorted(p for p in folder.iterdir() if p.is_dir()))
            except OSError:
                continue
        level = nxt
    return None


def walk_files(root: Path, suffix: str) -> list[Path]:
    """Every file under root ending in `suffix` (case-insensitive), sorted; os.walk is fast on big trees."""
    suffix = suffix.lower()
    found = []
    for folder, _, files in os.walk(root):
        found.extend(Path(folder) / f for f in files if f.lower().endswith(suffix))
    return sorted(found)


def require_dir(root: str | Path, layout: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder; expected {layout}")
    return root
