"""The data path, each stage once, as small functions over plain data:

    source     expand_paths(args)                     paths, folders, globs -> files (+ one error per bad argument)
    decode     decode_file / decode_files / decode_windows / probe_file
                                                      untrusted decoding + features in worker processes
                                                      (mmdeploy.isolate running mmdeploy.jobs), or here with
                                                      isolated=False (tests, trusted data) -> feature items
    batch      window_batches(items, batch_size)      a window stream -> batches of whatever is ready, while the
                                                      next windows decode (bounded memory)
    infer      infer(items, predictor)                a batch of feature items -> probabilities per head
    results    describe / make_result / classify_items / Timeline
                                                      probabilities -> the one result shape (mmdeploy/results.py)

`mmdeploy.classify` (CLI), `mmdeploy.batch` (local and Ray) and the service are callers of these. The
settings reach the stages as arguments: `decode_options(settings)` for the decoders, `inference_threads()`
for the predictor, `settings.decode_timeout_s` for the deadlines.

Missing modality: the predictor always gets both inputs (zeros for an absent one); the answer is the present
modality's own head, and `modalities` says which one was used. A silent audio track is audio.
"""
from __future__ import annotations

import functools
import glob
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mmdeploy import isolate
from mmdeploy.errors import MediaError
from mmdeploy.jobs import FAST, file_job, window_jobs
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.settings import DECODE_TIMEOUT_S, Settings, cpu_count

MEDIA_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .flv .mpg .mpeg .ts .mts .3gp .wmv .ogv "
    ".wav .mp3 .flac .ogg .opus .m4a .aac .wma".split())
BATCH = 16  # windows (or files) per inference call
POOL_MIN_FILES = 16  # up to this many files decode in one worker process; more: one worker per core


# ---- settings -> stage arguments --------------------------------------------------------------------
def decode_options(settings: Settings) -> DecodeOptions:
    return DecodeOptions(frame_threads=settings.frame_threads, reference=settings.reference_decode)


def inference_threads() -> int:
    """Threads for inference here: one core is left to decoding (the timeline's decode thread or the
    worker processes); intra-op threads that share a core with the decoder spin and slow both down."""
    return max(1, cpu_count() - 1)


# ---- source -----------------------------------------------------------------------------------------
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


# ---- decode (+ features) ----------------------------------------------------------------------------
def decode_file(path: str | Path, spec, timeout: float | None = DECODE_TIMEOUT_S, isolated: bool = True,
                options: DecodeOptions = FAST) -> dict[str, Any]:
    """The first spec window of one file -> its feature item. MediaError for a bad file, a decoder crash
    or a decode longer than `timeout` s."""
    if isolated:
        return isolate.decode_isolated(path, spec, timeout, options)
    job = file_job(str(path), spec, options)
    if "error" in job:
        raise MediaError(path, job["error"])
    return job


def decode_files(paths: list[Path], spec, workers: int | None = None, timeout: float | None = DECODE_TIMEOUT_S,
                 job: Callable | None = None, isolated: bool = True,
                 options: DecodeOptions = FAST) -> Iterator[list[dict[str, Any]]]:
    """Many files -> lists of feature items or {"file", "error"}, whatever finished together, in completion
    order, on `workers` worker processes (default: all cores when more than POOL_MIN_FILES files, else one).
    A worker that crashes or passes `timeout` s on a file costs only that file. `job(path, spec)` replaces
    jobs.file_job (tests inject crashes with it); isolated=False runs the jobs here, one by one."""
    job = job or functools.partial(file_job, options=options)
    if not isolated:
        for path in paths:
            yield [job(str(path), spec)]
        return
    if workers is None:
        workers = cpu_count() if len(paths) > POOL_MIN_FILES else 1
    workers = max(1, min(workers, len(paths)))
    for answers in isolate.run_jobs(job, [(str(p), spec) for p in paths], workers, timeout):
        yield [value if ok else {"file": args[0], "error": value} for args, ok, value in answers]


def decode_windows(path: str | Path, spec, window: float | None = None, hop: float | None = None,
                   timeout: float | None = DECODE_TIMEOUT_S, isolated: bool = True,
                   options: DecodeOptions = FAST, plan=None) -> Iterator[dict[str, Any]]:
    """Consecutive windows of one file -> feature items, streamed; MediaError before or during streaming
    (isolated: `timeout` bounds each window, and closing the iterator kills its worker(s) from any thread).
    With a split `plan` (plan_windows), its segments decode on `plan.workers` workers at once
    (mmdeploy/segments.py): the same items, in the same order."""
    if plan is not None and plan.split:
        from mmdeploy import segments

        window = window or spec.window_seconds
        hop = hop or window
        stream = segments.isolated_stream(path, spec, window, hop, timeout, options) if isolated \
            else segments.local_stream(path, spec, window, hop, options)
        return segments.SegmentedWindows(plan, stream, plan.workers)
    if isolated:
        return isolate.iter_isolated(path, spec, window, hop, timeout, options)
    return window_jobs(str(path), spec, window, hop, options)


def plan_windows(path: str | Path, spec, window: float | None = None, hop: float | None = None,
                 workers: int | None = None, timeout: float | None = DECODE_TIMEOUT_S, isolated: bool = True):
    """How a timeline of one file is decoded (media.keyframes.SegmentPlan): cut at keyframes into segments for
    `workers` decode workers (default: timeline_workers()), or sequential with the reason. Made in a worker
    (it reads the file); MediaError for a bad file."""
    from mmdeploy.jobs import plan_job
    from mmdeploy.media.keyframes import sequential

    workers = timeline_workers() if workers is None else workers
    if workers < 2:
        return sequential("one decode worker")
    args = (str(path), spec, window, hop, workers)
    return isolate.call(path, plan_job, args, timeout) if isolated else plan_job(*args)


def timeline_workers() -> int:
    """Decode workers for one file's timeline: every core (the audio pass and inference are light beside
    video decoding; measured in benchmarks/classify.py --sections timeline)."""
    return cpu_count()


def decode_live(source, spec, window: float, hop: float, open_s: float, read_s: float,
                options: DecodeOptions = FAST) -> Iterator[dict[str, Any]]:
    """A live source (media.live.LiveSource) -> notes and feature items as windows complete (livejob.live_job),
    streamed from a worker process: a hostile stream crashes or hangs only that worker (MediaError, like a
    file). The stream always ends with a MediaError saying why (ended, stalled, crashed). `close()` kills it."""
    from mmdeploy.livejob import live_job

    deadline = open_s + read_s + window + 30.0  # per item: the source's own deadlines fire first
    return isolate.IsolatedWindows(source.name, live_job, (source, spec, window, hop, options, open_s, read_s),
                                   deadline)


def start_decoders(keep: int = 0, recycle_jobs: int | None = None, recycle_mb: float | None = None) -> None:
    """Start the decode workers' forkserver and one worker in the background (overlapping the model's
    load); keep up to `keep` idle workers warm from now on; replace a worker after `recycle_jobs` jobs or
    past `recycle_mb` MB resident (settings.decode_recycle_jobs / _mb; None: isolate's defaults, the same)."""
    isolate.IDLE_WORKERS = max(isolate.IDLE_WORKERS, keep)
    if recycle_jobs is not None:
        isolate.RECYCLE_JOBS = recycle_jobs
    if recycle_mb is not None:
        isolate.RECYCLE_MB = recycle_mb
    isolate.prestart()


def warm_decoder() -> None:
    """Block until one decode worker is started and idle."""
    isolate.checkin(isolate.checkout())


def probe_file(path: str | Path, timeout: float | None = DECODE_TIMEOUT_S):
    """media.probe in a worker process (a hostile header costs only the request)."""
    from mmdeploy.media import probe

    return isolate.call(path, probe, (str(path),), timeout)


# ---- batch ------------------------------------------------------------------------------------------
def window_batches(items: Iterator[dict[str, Any]], batch_size: int = BATCH) -> Iterator[list[dict[str, Any]]]:
    """A window stream -> batches of whatever is ready (1 to `batch_size` items): a thread here drains the
    stream into a queue of 2 * batch_size while the caller runs a batch. The stream's exception is raised
    after the batches before it. Closing this generator stops the thread and, for an isolated stream,
    kills its worker at once (even while the thread waits on it)."""
    feed: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    stop = threading.Event()
    drain = threading.Thread(target=_drain, args=(items, feed, stop), daemon=True, name="mmdeploy-windows")
    drain.start()
    try:
        failure = None
        while failure is None:
            batch = [feed.get()]
            while len(batch) < batch_size and not feed.empty():
                batch.append(feed.get_nowait())
            if not isinstance(batch[-1], dict):  # None: the end; an exception: the stream failed
                failure = batch.pop() or StopIteration()
            if batch:
                yield batch
        if not isinstance(failure, StopIteration):
            raise failure
    finally:
        stop.set()
        from mmdeploy.segments import SegmentedWindows  # (lazy: not on the CLI's start-up path)

        if isinstance(items, (isolate.IsolatedWindows, SegmentedWindows)):  # worker(s): killed now, from here
            items.close()
            drain.join(5)  # it wakes on the worker's death: no thread is left inside a read at exit


def _drain(items: Iterator[dict[str, Any]], feed: queue.Queue, stop: threading.Event) -> None:
    """Move items to `feed`; then None (or the exception). Stops when `stop` is set."""
    def put(item) -> bool:
        while not stop.is_set():
            try:
                feed.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in items:
            if not put(item):
                return
        put(None)
    except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it (never a silent hang)
        put(exc)


# ---- infer ------------------------------------------------------------------------------------------
class LoadingPredictor:
    """A predictor that loads in a background thread while the decoders already work: `spec` is known up
    front (`bundle_spec`: the bundle's model.json, checked again when the predictor is built), every other
    attribute (`predict`, `classes`, `backend`, ...) waits for `load()` to finish and raises its error (a
    tampered bundle: BundleError). A cold `mmdeploy classify` overlaps loading the model with decoding its
    first file this way."""

    def __init__(self, load: Callable[[], Any], spec):
        self.spec = spec
        self._done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(load,), daemon=True, name="mmdeploy-model").start()

    def _run(self, load: Callable[[], Any]) -> None:
        try:
            self._value = load()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread by result()
            self._error = exc
        finally:
            self._done.set()

    def result(self):
        """The loaded predictor (waits for it); its spec must be the one decoding started with."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        if self._value.spec != self.spec:
            from mmdeploy.errors import BundleError

            raise BundleError("the model's spec changed while it was loading (model.json rewritten?); run again")
        return self._value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.result(), name)


def load_model(run: str | Path, backend: str = "auto", threads: int | None = None):
    """runtime.load_predictor with `threads` intra-op threads (default inference_threads()): ONNX Runtime
    and OpenVINO take them as an argument, torch (imported only by its own backends, never for the others)
    as its process-wide setting."""
    from mmdeploy.runtime import load_predictor

    threads = threads or inference_threads()
    predictor = load_predictor(run, backend, threads=threads)
    if predictor.backend.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
    return predictor


def bundle_spec(run: str | Path):
    """The ClipSpec in RUN/model.json, read without loading or verifying anything else (that is the
    predictor's job): enough to start decoding while the model loads. BundleError for a missing bundle."""
    from mmdeploy.bundle import META, read_meta
    from mmdeploy.spec import ClipSpec

    return ClipSpec.from_dict(read_meta(run)["spec"], where=f"{Path(run) / META}: spec")


def infer(items: list[dict[str, Any]], predictor) -> list[dict[str, np.ndarray]]:
    """Batch of feature items (audio/video arrays or None) -> per item {"fused", "audio"?, "video"?}
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


# ---- results ----------------------------------------------------------------------------------------
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
    """The result dict (results.ClassifyResult); `window` ({start, end} seconds classified) comes right
    after `file`."""
    head = {"file": str(path), **({"window": window} if window is not None else {})}
    return {**head, **describe(probs, list(predictor.classes), top_k), "backend": predictor.backend,
            "timings_ms": {k: round(timings.get(k, 0.0), 3) for k in ("decode", "features", "infer")}}


def classify_items(items: list[dict[str, Any]], predictor, top_k: int) -> list[dict[str, Any]]:
    """A batch of feature items -> one result each; each item's infer time is its share of the batch."""
    t0 = time.perf_counter()
    probs = infer(items, predictor)
    share = (time.perf_counter() - t0) * 1e3 / len(items)
    return [make_result(j["file"], p, predictor, {**j["timings_ms"], "infer": share}, top_k, j.get("window"))
            for j, p in zip(items, probs)]


class Timeline:
    """One file's windows -> a line per window (results.TimelineWindow) and, at the end, the file's result
    (results.TimelineResult): the mean of the window probabilities, `modalities` = every modality some
    window used, timings summed over the windows."""

    def __init__(self, path: str, predictor, top_k: int):
        self.path, self.predictor, self.top_k = str(path), predictor, top_k
        self.windows: list[dict[str, Any]] = []
        self.totals = {"decode": 0.0, "features": 0.0, "infer": 0.0}
        self.sums: dict[str, np.ndarray] = {}
        self.decoding: dict[str, Any] | None = None  # SegmentPlan.summary(): segments, workers, or why sequential

    def classify(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A batch of window items -> their lines."""
        t0 = time.perf_counter()
        probs = infer(batch, self.predictor)
        self.totals["infer"] += (time.perf_counter() - t0) * 1e3
        return [self.add(item, p) for item, p in zip(batch, probs)]

    def add(self, item: dict[str, Any], probs: dict[str, np.ndarray]) -> dict[str, Any]:
        for k in ("decode", "features"):
            self.totals[k] += item["timings_ms"][k]
        for k, v in probs.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        d = describe(probs, list(self.predictor.classes), self.top_k)
        row = {"start": item["window"]["start"], "end": item["window"]["end"], "label": d["label"],
               "score": d["score"]}
        self.windows.append(row)
        return {"file": self.path, **row, "probs": d["probs"], "modalities": d["modalities"],
                "per_modality": d["per_modality"]}

    def result(self) -> dict[str, Any]:
        if not self.windows:
            raise MediaError(self.path, "no window could be decoded")
        n = len(self.windows)
        result = make_result(self.path, {k: v / n for k, v in self.sums.items()}, self.predictor, self.totals,
                             self.top_k, window={"start": self.windows[0]["start"], "end": self.windows[-1]["end"]})
        return {**result, "windows": self.windows, **({"decoding": self.decoding} if self.decoding else {})}

