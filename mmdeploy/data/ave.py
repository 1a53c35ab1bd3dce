"""AVE tree -> manifest: <VideoID>.mp4 files + the official split lists; the event segment is the window.

The release holds AVE/*.mp4 (or the videos directly under ROOT), Annotations.txt and the split files
trainSet.txt / valSet.txt / testSet.txt, one line per video: `Category&VideoID&Quality&StartTime&EndTime`
(a header line may come first). The annotated event [StartTime, EndTime] becomes the manifest window
(start/end columns); group = VideoID. A video listed twice (the real lists have 3,339 train lines for
3,312 videos) keeps its first line only (the MLB loader also drops duplicates). Classes follow the MLB
code's 28-class order.
"""
from __future__ import annotations

from pathlib import Path

from mmdeploy.data.indexing import Index, Report, find_file, probe_all, require_dir, walk_files
from mmdeploy.data.manifest import Item
from mmdeploy.errors import ConfigError

CLASSES = ("Church bell", "Male speech, man speaking", "Bark", "Fixed-wing aircraft, airplane",
           "Race car, auto racing", "Female speech, woman speaking", "Helicopter", "Violin, fiddle", "Flute",
           "Ukulele", "Frying (food)", "Truck", "Shofar", "Motorcycle", "Acoustic guitar", "Train horn", "Clock",
           "Banjo", "Goat", "Baby cry, infant cry", "Bus", "Chainsaw", "Cat", "Horse", "Toilet flush",
           "Rodents, rats, mice", "Accordion", "Mandolin")
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
LAYOUT = "the AVE layout ROOT/AVE/*.mp4 (or ROOT/*.mp4) with Annotations.txt, trainSet.txt, valSet.txt, testSet.txt"
END_SLACK = 0.05  # seconds an annotated end may pass the file's end without a note


def read_list(path: Path, report: Report) -> list[tuple[str, str, float, float, int]]:
    """Lines of one AVE list -> (category, video id, start, end, line number); bad lines reported."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("&")]
        where = f"{path.name}:{n}"
        if len(fields) != 5:
            report.problem("malformed line", f"{where} {line[:60]!r}")
            continue
        category, vid, _quality, start, end = fields
        try:
            t0, t1 = float(start), float(end)
        except ValueError:
            if n == 1:  # header: Category&VideoID&Quality&StartTime&EndTime
                continue
            report.problem("malformed line", f"{where} {line[:60]!r}")
            continue
        if category not in CLASSES:
            report.problem("unknown category", f"{where} {category!r}")
        elif not 0 <= t0 < t1:
            report.problem("empty event window", f"{where} {vid} [{start}, {end}]")
        else:
            rows.append((category, vid, t0, t1, n))
    return rows


def video_id(path: Path) -> str:
    """AVE/<VideoID>.mp4; some re-packs name files `Category&VideoID&Quality&Start&End.mp4`."""
    fields = path.stem.split("&")
    return fields[1] if len(fields) == 5 else path.stem


def index_ave(root: str | Path, *, workers: int | None = None) -> Index:
    root = require_dir(root, LAYOUT)
    lists = {split: find_file(root, name) for split, name in SPLIT_FILES.items()}
    missing = [SPLIT_FILES[s] for s, p in lists.items() if p is None]
    if missing:
        raise ConfigError(f"{root}: {missing[0]} not found; expected {LAYOUT} (the split lists come with the "
                          "AVE release and with MLB's datasets/AVE)")
    videos = {video_id(p): p for p in walk_files(root, ".mp4")}
    if not videos:
        raise ConfigError(f"{root}: no .mp4 videos found; expected {LAYOUT}")
    report = Report()
    rows: list[tuple[str, str, str, float, float]] = []  # split, category, vid, start, end
    seen: dict[str, str] = {}
    for split, path in lists.items():
        for category, vid, t0, t1, n in read_list(path, report):
            if vid in seen:
                report.note("video listed again, later line dropped" if seen[vid] == split else
                            f"video also listed in {seen[vid]}, dropped", f"{path.name}:{n} {vid}")
                continue
            seen[vid] = split
            if vid not in videos:
                report.problem("missing video", f"{vid}.mp4")
                continue
            rows.append((split, category, vid, t0, t1))
    annotations = find_file(root, "Annotations.txt")
    if annotations is not None:
        for _, vid, _, _, n in read_list(annotations, Report()):
            if vid not in seen:
                seen[vid] = "none"
                report.note("annotated but in no split list, ignored", f"{annotations.name}:{n} {vid}")

    probed = probe_all([videos[r[2]] for r in rows], workers)
    items = []
    for split, category, vid, t0, t1 in rows:
        info = probed[str(videos[vid])]
        name = videos[vid].name
        if info.error:
            report.problem("unreadable video", f"{name}: {info.error}")
        elif not info.audio:
            report.problem("no audio track", name)
        elif not info.video:
            report.problem("no video track", name)
        elif info.duration is not None and info.duration <= t0:
            report.problem("event starts after the end of the file", f"{name} ({info.duration:.2f} s < {t0:g} s)")
        else:
            if info.duration is not None and t1 > info.duration + END_SLACK:
                report.note("event end clipped to the file's end", f"{name} ({t1:g} -> {info.duration:.2f} s)")
                t1 = info.duration
            items.append(Item(path=str(videos[vid]), label=category, split=split, start=t0, end=t1, group=vid))
    return Index(items=items, classes=list(CLASSES), report=report)
