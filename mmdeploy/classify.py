"""Files -> predictions: one window per file, or a timeline of windows; missing-modality fallback; attribution.

One result per file (a dict, printed as one JSON line by `mmdeploy classify --json`):

    file, label, score, probs{class: p}, top_k[{label, score}], modalities[used],
    per_modality{audio|video: {label, score, agrees, probs}}, backend, timings_ms{decode, features, infer}
    + windows[{start, end, label, score}]   (timeline only)

A bad file gives {"file": ..., "error": reason} instead; callers print it and carry on. timings_ms.infer
is the file's share of its batch.

Without a window, a file is classified from its first `spec.window_seconds` (the window training uses:
`features.file_features(path, spec)`). Many files: decoding and features run in worker processes
(forkserver-safe top-level jobs, each computing features with the bundle's spec); inference runs in batches
here; results come out in completion order.

Timeline: `media.iter_windows` streams consecutive windows in a thread, features are computed as they
arrive, and windows are classified in batches while the next ones decode; memory is bounded by a small
queue, whatever the file length. It yields one dict per window ({file, start, end, label, score, probs,
modalities}) as soon as its batch is done, then the file's result: the mean of the window probabilities,
`modalities` = every modality some window used. A window longer than the model's has its frames spread
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
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from mmdeploy.errors import MediaError, MmdeployError
from mmdeploy.spec import ClipSpec

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .mpg .mpeg .ts .mts .3gp .wmv .ogv "
    ".wav .mp3 .flac .ogg .opus .m4a .aac .wma".split())
BATCH = 16
POOL_MIN_FILES = 16  # starting the worker pool costs 2-5 s (torch + PyAV imports); fewer files run here


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
        clip = _guard(path, lambda: decode_window(path, spec))
        t1 = time.perf_counter()
        audio, video = clip_features(clip, spec)
        t2 = time.perf_counter()
    except MmdeployError as exc:
        return error_result(path, exc)
    return {"file": path, "audio": audio, "video": video,
            "timings_ms": {"decode": (t1 - t0) * 1e3, "features": (t2 - t1) * 1e3}}


def _guard(path: str, decode):
    """Run a decode call; decoder errors that escape media.py become MediaError."""
    import av

    try:
        return decode()
    except (av.FFmpegError, OSError, EOFError) as exc:
        raise MediaError(path, f"cannot decode ({exc})") from None


def _context():
    """forkserver with torch, PyAV and the feature code preloaded: each worker forks from a process that
    imported them once (spawn would import torch per worker; fork is unsafe after torch threads start)."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mmdeploy.classify", "mmdeploy.features", "mmdeploy.media", "av"])
    return ctx


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


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
                top_k: int) -> dict[str, Any]:
    return {"file": str(path), **describe(probs, list(predictor.classes), top_k), "backend": predictor.backend,
            "timings_ms": {k: round(timings.get(k, 0.0), 3) for k in ("decode", "features", "infer")}}


# ---- one file, many files -------------------------------------------------------------------
def classify_file(path: str | Path, predictor, top_k: int = 5) -> dict[str, Any]:
    """One file (its first spec window) -> the result dict. Raises MediaError for a bad file."""
    job = file_job(str(path), predictor.spec)
    if "error" in job:
        raise MediaError(path, job["error"])
    return _finish([job], predictor, top_k)[0]


def classify_files(paths: list[Path], predictor, top_k: int = 5, workers: int | None = None,
                   batch_size: int = BATCH, job=file_job) -> Iterator[dict[str, Any]]:
    """Many files -> results (or {"file", "error"}) in completion order. Decoding and features run in
    `workers` processes (default: all cores, or this process for up to POOL_MIN_FILES files); whatever
    is ready is classified as one batch. `job(path, spec)` is the per-file worker function.
    A worker that dies (a decoder crash) costs only its file: the files it may have held are retried
    one per fresh worker, and the one that crashes again is reported as an error."""
    if workers is None:
        workers = (os.cpu_count() or 1) if len(paths) > POOL_MIN_FILES else 1
    workers = min(workers, len(paths))
    if workers <= 1:
        for path in paths:
            result = job(str(path), predictor.spec)
            yield result if "error" in result else _finish([result], predictor, top_k)[0]
        return
    todo = [str(p) for p in reversed(paths)]
    while todo:
        suspects = yield from _pool_pass(todo, predictor, top_k, workers, batch_size, job)
        for path in suspects:
            if (yield from _pool_pass([path], predictor, top_k, 1, batch_size, job)):
                yield {"file": path, "error": "the decoder crashed on this file (its worker process died)"}


def _pool_pass(todo: list[str], predictor, top_k: int, workers: int, batch_size: int, job):
    """Run `todo` (a stack, consumed) through one worker pool, yielding results; returns the paths in
    flight if a worker died (the pool is then unusable), else []."""
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(workers, mp_context=_context(), initializer=_worker_init) as pool:
        pending: dict[Any, str] = {}
        while todo or pending:
            while todo and len(pending) < 2 * workers:  # bounded: results wait here, not in memory
                path = todo.pop()
                pending[pool.submit(job, path, predictor.spec)] = path
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            jobs, lost = [], []
            for future in done:
                path = pending.pop(future)
                try:
                    jobs.append(future.result())
                except BrokenProcessPool:
                    lost.append(path)
            yield from (j for j in jobs if "error" in j)
            ready = [j for j in jobs if "error" not in j]
            for i in range(0, len(ready), batch_size):
                yield from _finish(ready[i:i + batch_size], predictor, top_k)
            if lost:
                return [*lost, *pending.values()]
    return []


def _finish(jobs: list[dict[str, Any]], predictor, top_k: int) -> list[dict[str, Any]]:
    """Classify a batch of worker results; each file's infer time is its share of the batch."""
    t0 = time.perf_counter()
    probs = infer(jobs, predictor)
    share = (time.perf_counter() - t0) * 1e3 / len(jobs)
    return [make_result(j["file"], p, predictor, {**j["timings_ms"], "infer": share}, top_k)
            for j, p in zip(jobs, probs)]


# ---- timeline -------------------------------------------------------------------------------
def classify_timeline(path: str | Path, predictor, window: float | None = None, hop: float | None = None,
                      top_k: int = 5, batch_size: int = BATCH) -> Iterator[dict[str, Any]]:
    """Consecutive windows of one file -> one dict per window as its batch is done, then the file's
    result with `windows`. Raises MediaError for a bad file (before or during streaming)."""
    path = str(path)
    spec = predictor.spec
    window = window or spec.window_seconds
    hop = hop or window
    classes = list(predictor.classes)
    feed: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(path, spec, window, hop, feed, stop), daemon=True)
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
    if not windows:
        raise MediaError(path, "no window could be decoded")
    result = make_result(path, {k: v / len(windows) for k, v in sums.items()}, predictor, totals, top_k)
    yield {**result, "windows": windows}


def _produce(path: str, spec: ClipSpec, window: float, hop: float, feed: queue.Queue,
             stop: threading.Event) -> None:
    """Decode windows as a stream and compute their features; put dicts, then None (or the exception)."""
    from mmdeploy.media import iter_windows

    def put(item) -> bool:
        while not stop.is_set():
            try:
                feed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        clips = _guard(path, lambda: iter_windows(path, spec, window=window, hop=hop))
        while True:
            t0 = time.perf_counter()
            clip = _guard(path, lambda: next(clips, None))
            if clip is None:
                break
            t1 = time.perf_counter()
            audio, video = clip_features(clip, spec)
            t2 = time.perf_counter()
            item = {"audio": audio, "video": video, "start": round(float(clip.start), 6),
                    "end": round(float(clip.start) + float(clip.seconds), 6),
                    "decode": (t1 - t0) * 1e3, "features": (t2 - t1) * 1e3}
            if not put(item):
                return
        put(None)
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it (never a silent hang)
        put(exc)


# ---- text output ----------------------------------------------------------------------------
def format_result(result: dict[str, Any]) -> str:
    """A result dict -> a few readable lines (label, top-k, each modality's opinion, timings)."""
    lines = [f"{result['file']}: {result['label']} {result['score']:.3f}  "
             f"[{'+'.join(result['modalities'])}, {result['backend']}]",
             "  top: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top_k"])]
    for m, v in result["per_modality"].items():
        lines.append(f"  {m}: {v['label']} {v['score']:.3f} ({'agrees' if v['agrees'] else 'disagrees'})")
    t = result["timings_ms"]
    lines.append(f"  ms: decode {t['decode']:.1f}, features {t['features']:.1f}, infer {t['infer']:.1f}")
    return "\n".join(lines)


def format_window(row: dict[str, Any]) -> str:
    return f"{row['file']} {row['start']:8.2f}-{row['end']:.2f}s  {row['label']} {row['score']:.3f}"
