"""Files -> predictions: one window per file, or a timeline of windows; missing-modality fallback; attribution.

One result per file (a dict, printed as one JSON line by `mmdeploy classify --json`):

    file, window{start, end}, label, score, probs{class: p}, top_k[{label, score}], modalities[used],
    per_modality{audio|video: {label, score, agrees, probs}}, backend, timings_ms{decode, features, infer}
    + windows[{start, end, label, score}]   (timeline only)

`window` is the part of the file that was classified, in seconds from its start (a 30-s file without
--window: {0, 2} for a 2-s model; a timeline: first window's start to last window's end).
A bad file gives {"file": ..., "error": reason} instead; callers print it and carry on. timings_ms.infer
is the file's share of its batch.

Without a window, a file is classified from its first `spec.window_seconds` (the window training uses:
`features.file_features(path, spec)`). Decoding is untrusted work: by default it runs in worker processes
(`mmdeploy.isolate`), so a decoder crash or hang costs only that file: one file or many, timelines too
(`isolated=False` decodes here, for tests and trusted data). Many files: jobs spread over the workers;
inference runs in batches here; results come out in completion order.

Timeline: a worker streams consecutive windows' features (`window_jobs`) through a pipe that a thread
here drains into a small queue; windows are classified in batches while the next ones decode; memory is
bounded by that queue, whatever the file length. It yields one dict per window ({file, start, end, label,
score, probs, modalities}) as soon as its batch is done, then the file's result: the mean of the window
probabilities, `modalities` = every modality some window used. A window longer than the model's has its frames spread
over it and its audio cut to the model's length (features.fit_length); a shorter one is tiled or padded.

Missing modality: the predictor always gets both inputs (zeros for an absent one); the answer is the
present modality's own head and `modalities` says which one was used. A silent audio track is audio.
"""
from __future__ import annotations

import glob
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mmdeploy.errors import MediaError, MmdeployError
from mmdeploy.isolate import DECODE_TIMEOUT_S
from mmdeploy.spec import ClipSpec

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .mpg .mpeg .ts .mts .3gp .wmv .ogv "
    ".wav .mp3 .flac .ogg .opus .m4a .aac .wma".split())
BATCH = 16
POOL_MIN_FILES = 16  # up to this many files decode in one worker process; more: one worker per core


def inference_threads() -> int:
    """Threads for inference here: one core is left to decoding (the timeline's decode thread or the
    worker processes); intra-op threads that share a core with the decoder spin and slow both down."""
    return max(1, (os.cpu_count() or 1) - 1)


# ---- which files ---------------------------------------------------------------------------
def expand_paths(args: Iterable[str], limit: int | None = None) -> tuple[list[Path], list[MediaError]]:
    """Paths, globs and folders (recursive, media extensions only) -> (files, errors), files in
    argument order then sorted within a folder or glob, duplicates dropped, at most `limit` files."""
    files: list[Path] = []
    errors: list[MediaError] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
            if not found:
                errors.append(MediaError(path, "folder has no media files (looked for "
                                               f"{', '.join(sorted(MEDIA_EXTENSIONS))})"))
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif glob.has_magic(arg):
            found = sorted(Path(p) for p in glob.glob(arg, recursive=True) if Path(p).is_file())
            if not found:
                errors.append(MediaError(arg, "no file matches this pattern"))
            files.extend(found)
        else:
            errors.append(MediaError(path, "no such file or folder"))
    unique = list(dict.fromkeys(files))
    return unique[:limit] if limit is not None else unique, errors


# ---- decode + features (runs in worker processes) -------------------------------------------
def clip_features(clip, spec: ClipSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Clip -> (audio [1,F,T] | None, video [3,N,H,W] | None) as float32 numpy, via the one features function."""
    from mmdeploy.features import compute_features

    if not (clip.has_audio or clip.has_video):
        raise MediaError(clip.path, "no audio or video track")
    audio, video = compute_features(clip, spec)
    return (None if audio is None else audio.numpy(), None if video is None else video.numpy())


def file_job(path: str, spec: ClipSpec) -> dict[str, Any]:
    """Worker job for one file: decode its first window, compute features, time both. Errors come
    back as {"file", "error"} (exceptions with custom constructors do not cross processes cleanly)."""
    from mmdeploy.media import decode_window

    try:
        t0 = time.perf_counter()
        clip = decode_window(path, spec)
        t1 = time.perf_counter()
        audio, video = clip_features(clip, spec)
        t2 = time.perf_counter()
    except MmdeployError as exc:
        return error_result(path, exc)
    return {"file": path, "audio": audio, "video": video, "window": clip_window(clip),
            "timings_ms": {"decode": (t1 - t0) * 1e3, "features": (t2 - t1) * 1e3}}


def clip_window(clip) -> dict[str, float]:
    """{start, end}: the seconds of the file a clip covers."""
    return {"start": round(float(clip.start), 6), "end": round(float(clip.start) + float(clip.seconds), 6)}


def window_jobs(path: str, spec: ClipSpec, window: float | None = None,
                hop: float | None = None) -> Iterator[dict[str, Any]]:
    """Timeline job: consecutive windows -> {audio, video, start, end, decode, features} (ms), streamed."""
    from mmdeploy.media import iter_windows

    clips = iter_windows(path, spec, window=window, hop=hop)
    while True:
        t0 = time.perf_counter()
        clip = next(clips, None)
        if clip is None:
            return
        t1 = time.perf_counter()
        audio, video = clip_features(clip, spec)
        yield {"audio": audio, "video": video, **clip_window(clip),
               "decode": (t1 - t0) * 1e3, "features": (time.perf_counter() - t1) * 1e3}


def error_result(path: str | Path, exc: Exception) -> dict[str, str]:
    """{"file", "error"}; the error text is the reason alone (the CLI prints `error: FILE: reason`)."""
    reason = exc.reason if isinstance(exc, MediaError) else str(exc)
    return {"file": str(path), "error": reason}


# ---- inference + the result dict -------------------------------------------------------------
def infer(items: list[dict[str, Any]], predictor) -> list[dict[str, np.ndarray]]:
    """Batch of feature dicts (audio/video arrays or None) -> per item {"fused", "audio"?, "video"?}
    probabilities, absent inputs fed as zeros and their heads dropped; "fused" is the present
    modality's head when only one is there."""
    spec = predictor.spec
    audio = np.stack([x["audio"] if x["audio"] is not None else np.zeros((1, *spec.spectrogram_shape), np.float32)
                      for x in items])
    video = np.stack([x["video"] if x["video"] is not None else np.zeros(spec.frames_shape, np.float32)
                      for x in items])
    probs = predictor.predict(audio, video)
    out = []
    for i, x in enumerate(items):
        present = [m for m in ("audio", "video") if x[m] is not None]
        heads = {m: np.asarray(probs[m][i], dtype=np.float64) for m in present}
        fused = np.asarray(probs["fused"][i], dtype=np.float64) if len(present) == 2 else heads[present[0]]
        out.append({"fused": fused, **heads})
    return out


def describe(probs: dict[str, np.ndarray], classes: list[str], top_k: int) -> dict[str, Any]:
    """Probabilities -> label, score, probs, top_k, modalities, per_modality (with agreement); 6 decimals."""
    fused = np.round(probs["fused"] / probs["fused"].sum(), 6)
    best = int(np.argmax(fused))
    order = np.argsort(-fused, kind="stable")[:top_k]
    modalities = [m for m in ("audio", "video") if m in probs]
    per_modality = {}
    for m in modalities:
        p = np.round(probs[m] / probs[m].sum(), 6)
        k = int(np.argmax(p))
        per_modality[m] = {"label": classes[k], "score": float(p[k]), "agrees": k == best,
                           "probs": dict(zip(classes, p.tolist()))}
    return {"label": classes[best], "score": float(fused[best]), "probs": dict(zip(classes, fused.tolist())),
            "top_k": [{"label": classes[i], "score": float(fused[i])} for i in order],
            "modalities": modalities, "per_modality": per_modality}


def make_result(path: str, probs: dict[str, np.ndarray], predictor, timings: dict[str, float],
                top_k: int, window: dict[str, float] | None = None) -> dict[str, Any]:
    """The result dict; `window` ({start, end} seconds classified) comes right after `file`."""
    head = {"file": str(path), **({"window": window} if window is not None else {})}
    return {**head, **describe(probs, list(predictor.classes), top_k), "backend": predictor.backend,
            "timings_ms": {k: round(timings.get(k, 0.0), 3) for k in ("decode", "features", "infer")}}


# ---- one file, many files -------------------------------------------------------------------
def classify_file(path: str | Path, predictor, top_k: int = 5, timeout: float | None = DECODE_TIMEOUT_S,
                  isolated: bool = True) -> dict[str, Any]:
    """One file (its first spec window) -> the result dict. Raises MediaError for a bad file, and for a
    decoder crash or a decode longer than `timeout` s (isolated: decoded in a worker process)."""
    if isolated:
        from mmdeploy.isolate import decode_isolated

        job = decode_isolated(path, predictor.spec, timeout)
    else:
        job = file_job(str(path), predictor.spec)
        if "error" in job:
            raise MediaError(path, job["error"])
    return classify_jobs([job], predictor, top_k)[0]


def classify_files(paths: list[Path], predictor, top_k: int = 5, workers: int | None = None,
                   batch_size: int = BATCH, job=file_job, timeout: float | None = DECODE_TIMEOUT_S,
                   isolated: bool = True) -> Iterator[dict[str, Any]]:
    """Many files -> results (or {"file", "error"}) in completion order. Decoding and features run in
    `workers` worker processes (default: all cores when more than POOL_MIN_FILES files, else one);
    whatever is ready is classified as one batch. `job(path, spec)` is the per-file worker function.
    A worker that crashes or passes `timeout` s on a file costs only that file (an error result) and is
    replaced. `isolated=False` runs the jobs here, one by one."""
    if workers is None:
        workers = (os.cpu_count() or 1) if len(paths) > POOL_MIN_FILES else 1
    workers = max(1, min(workers, len(paths)))
    if not isolated:
        for path in paths:
            result = job(str(path), predictor.spec)
            yield result if "error" in result else classify_jobs([result], predictor, top_k)[0]
        return
    from mmdeploy.isolate import run_jobs

    for answers in run_jobs(job, [(str(p), predictor.spec) for p in paths], workers, timeout):
        ready = []
        for (path, _), ok, value in answers:
            if not ok:
                yield {"file": path, "error": value}
            elif "error" in value:
                yield value
            else:
                ready.append(value)
        for i in range(0, len(ready), batch_size):
            yield from classify_jobs(ready[i:i + batch_size], predictor, top_k)


def classify_jobs(jobs: list[dict[str, Any]], predictor, top_k: int) -> list[dict[str, Any]]:
    """Classify a batch of worker results; each file's infer time is its share of the batch."""
    t0 = time.perf_counter()
    probs = infer(jobs, predictor)
    share = (time.perf_counter() - t0) * 1e3 / len(jobs)
    return [make_result(j["file"], p, predictor, {**j["timings_ms"], "infer": share}, top_k, j.get("window"))
            for j, p in zip(jobs, probs)]


# ---- timeline -------------------------------------------------------------------------------
def classify_timeline(path: str | Path, predictor, window: float | None = None, hop: float | None = None,
                      top_k: int = 5, batch_size: int = BATCH, timeout: float | None = DECODE_TIMEOUT_S,
                      isolated: bool = True) -> Iterator[dict[str, Any]]:
    """Consecutive windows of one file -> one dict per window as its batch is done, then the file's
    result with `windows`. Raises MediaError for a bad file (before or during streaming), a decoder crash
    or a window that takes longer than `timeout` s to decode (isolated: in a worker process, which is
    killed as soon as this generator is closed)."""
    path = str(path)
    spec = predictor.spec
    window = window or spec.window_seconds
    hop = hop or window
    classes = list(predictor.classes)
    if isolated:
        from mmdeploy.isolate import iter_isolated

        source = iter_isolated(path, spec, window, hop, timeout)
    else:
        source = window_jobs(path, spec, window, hop)
    feed: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(source, feed, stop), daemon=True)
    producer.start()
    windows: list[dict[str, Any]] = []
    totals = {"decode": 0.0, "features": 0.0, "infer": 0.0}
    sums: dict[str, np.ndarray] = {}
    try:
        finished, failure = False, None
        while not finished:
            batch = [feed.get()]
            while len(batch) < batch_size and not feed.empty():
                batch.append(feed.get_nowait())
            if not isinstance(batch[-1], dict):  # None: the end; an exception: the producer failed
                finished, failure = True, batch.pop()
            if not batch:
                continue
            t0 = time.perf_counter()
            probs = infer(batch, predictor)
            totals["infer"] += (time.perf_counter() - t0) * 1e3
            for item, p in zip(batch, probs):
                totals["decode"] += item["decode"]
                totals["features"] += item["features"]
                for k, v in p.items():
                    sums[k] = sums.get(k, 0.0) + v
                d = describe(p, classes, top_k)
                row = {"start": item["start"], "end": item["end"], "label": d["label"], "score": d["score"]}
                windows.append(row)
                yield {"file": path, **row, "probs": d["probs"], "modalities": d["modalities"]}
        if failure is not None:
            raise failure
    finally:
        stop.set()
        close = getattr(source, "close", None)
        if close is not None and isolated:  # kills the worker now, even while the producer waits on it
            close()
    if not windows:
        raise MediaError(path, "no window could be decoded")
    result = make_result(path, {k: v / len(windows) for k, v in sums.items()}, predictor, totals, top_k,
                         window={"start": windows[0]["start"], "end": windows[-1]["end"]})
    yield {**result, "windows": windows}


def _produce(source: Iterator[dict[str, Any]], feed: queue.Queue, stop: threading.Event) -> None:
    """Move window items from `source` to `feed`; then None (or the exception). Stops when `stop` is set."""
    def put(item) -> bool:
        while not stop.is_set():
            try:
                feed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in source:
            if not put(item):
                return
        put(None)
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it (never a silent hang)
        put(exc)


# ---- text output ----------------------------------------------------------------------------
def format_result(result: dict[str, Any]) -> str:
    """A result dict -> a few readable lines (label, top-k, each modality's opinion, timings)."""
    w = result.get("window")
    span = f"  window {w['start']:.2f}-{w['end']:.2f}s" if w else ""
    lines = [f"{result['file']}: {result['label']} {result['score']:.3f}  "
             f"[{'+'.join(result['modalities'])}, {result['backend']}]{span}",
             "  top: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top_k"])]
    for m, v in result["per_modality"].items():
        lines.append(f"  {m}: {v['label']} {v['score']:.3f} ({'agrees' if v['agrees'] else 'disagrees'})")
    t = result["timings_ms"]
    lines.append(f"  ms: decode {t['decode']:.1f}, features {t['features']:.1f}, infer {t['infer']:.1f}")
    return "\n".join(lines)


def format_window(row: dict[str, Any]) -> str:
    return f"{row['file']} {row['start']:8.2f}-{row['end']:.2f}s  {row['label']} {row['score']:.3f}"
