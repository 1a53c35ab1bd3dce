"""The `ray` engine of `mmdeploy batch`: Ray Data, CPU tasks decode, an actor pool predicts.

    sources (path, file_id, ...; one block per decode batch)
      -> map_batches(decode_batch)   CPU tasks, at most `decoders` at once, num_cpus=1 each: jobs.file_job
                                     (or jobs.window_jobs for timelines) with the bundle's ClipSpec, each
                                     file in a decode process of the task's (mmdeploy.isolate, as the CLI),
                                     with the run's decode time limit per file (per window for timelines);
                                     a long timeline file is several sources, one per segment (see below)
      -> map_batches(Classifier)     actor pool, one Predictor per actor (load_predictor(run, backend)),
                                     num_gpus=1 per actor for a GPU backend; pipeline.classify_items
      -> the driver                  rows (JSON, small) stream back; parquet.PartWriter writes the parts

Results go through the driver, so RESULTS only needs to be writable there; the inputs must be readable
at the same paths on every node (a shared filesystem), and every node needs mmdeploy installed.
Memory: Ray Data streams blocks and backpressures on `object_store_memory`; the features of one decode
batch are the unit in flight.

Failures: a decoder crash or a decode past the time limit costs its file only (an error row naming the
signal or the limit; the task goes on with the next file). A decode task whose Ray worker dies (out of
memory, its node lost) is retried once by Ray; if it fails again its block is dropped (`max_errored_blocks`
unlimited) and the run goes on. The files that did not come back are then run one per task (no further
retry), so only a file that kills its worker is lost; it gets an error row. An inference actor that dies
is restarted once and its batch retried. Rows of a file seen twice (a retried task) are dropped.

Long timelines (batch/ray_segments.py): before decoding, each timeline file is planned (plan_batch: jobs.plan_job
in a decode process, the keyframe plan of the CLI's segment-parallel timeline, media/keyframes.py) in Ray tasks,
and a file the plan splits becomes one source per segment (expand), each in a decode task of its own (its own
block), at most one segment per decode task that can run at once (coarsen). A segment task decodes the video of
its windows [k0, k1) from the keyframe before them and their audio from the file's start (jobs.audio_span_job), merged into exactly the
items of the sequential decode; the driver puts the segments back in order (rows.Assembler) and writes the file's
rows as the unsplit path would, `decoding` saying how (as the CLI's timeline result). A file the plan does not
split (too short, a container whose seeks are not frame-exact, ...) is one source, decoded in one task as before.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from typing import Any, Callable, Iterator

import numpy as np

from mmdeploy.batch.inputs import Job, Source
from mmdeploy.batch.ray_segments import plan_sources, segment_windows
from mmdeploy.batch.rows import NO_WINDOW, Assembler, error_row, result_row
from mmdeploy.errors import BackendUnavailable, MediaError, MmdeployError, reason
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.raycluster import OBJECT_STORE_MB, configure_data, connect
from mmdeploy.settings import DECODE_TIMEOUT_S, cpu_count

DECODE_BATCH = 16  # files per decode task (and per input block): the unit a worker death costs
INFER_BATCH = 32  # windows per inference call
LOST = ("its Ray worker died twice while decoding it (a decoder crash, or out of memory), and again when "
        "run alone; the file is damaged or hostile")


def uses_gpu(backend: str) -> bool:
    """Whether actors get a GPU: a GPU backend (runtime.GPU_ONLY) always; the CPU backends and CPU engines
    (runtime.CPU_ONLY: openvino-*, onnxruntime-int8, the -cpu ones) never; auto and the onnxruntime/torch
    families when the cluster has GPUs (each actor then picks the CUDA member)."""
    from mmdeploy import runtime

    name = runtime.ALIASES.get(backend, backend)
    if name in runtime.GPU_ONLY:
        return True
    if name in runtime.CPU_ONLY or name.endswith("-cpu"):
        return False
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


# ---- the two stages (run in Ray workers) ---------------------------------------------------------------
_SPECS: dict[str, Any] = {}


def _spec(spec_json: str):
    from mmdeploy.spec import ClipSpec

    if spec_json not in _SPECS:
        _SPECS[spec_json] = ClipSpec.from_json(spec_json)
    return _SPECS[spec_json]


def decode_batch(batch: dict[str, np.ndarray], spec_json: str, window: float | None, hop: float | None,
                 timeline: bool, out_rows: int = INFER_BATCH, job: Callable | None = None,
                 options: DecodeOptions = DecodeOptions(), timeout: float | None = DECODE_TIMEOUT_S) -> Iterator[dict]:
    """Decode task: a batch of sources (JSON) -> batches of feature rows, at most `out_rows` each:
    meta (JSON: the source, window, timings, error, `_rows`), audio/video arrays (zeros when absent)
    and has_audio/has_video. Each file decodes in a decode process (isolate) within `timeout` s (a
    timeline: per window). `job(path, spec)` replaces jobs.file_job (tests inject failures with it)."""
    import functools

    from mmdeploy import isolate
    from mmdeploy.jobs import file_job

    spec = _spec(spec_json)
    job = job or functools.partial(file_job, options=options)
    rows: list[dict[str, Any]] = []
    if timeline:
        window = window or spec.window_seconds
        hop = hop or window
    for text in batch["source"]:
        src = json.loads(str(text))
        tags = {k: src.pop(k) for k in ("segment", "decoding") if k in src}  # a timeline's (see expand)
        if timeline:
            n = 0
            seg = tags.get("segment")
            try:
                windows = segment_windows(src["path"], spec, window, hop, timeout, options, seg) if seg else \
                    isolate.iter_isolated(src["path"], spec, window, hop, timeout, options)
                with contextlib.closing(windows):
                    for item in windows:
                        n += 1
                        rows.append({"src": src, **tags, "audio": item["audio"], "video": item["video"],
                                     "error": None, "window": item["window"], "timings_ms": item["timings_ms"],
                                     "_rows": 0})
                        if len(rows) >= out_rows:
                            yield _pack(rows, spec)
                            rows = []
                if n == 0 and seg is None:  # a segment may hold no window; the file as a whole: rows.Assembler
                    raise MediaError(src["path"], NO_WINDOW)
                _mark_end(rows, src, n, tags)
            except Exception as exc:  # noqa: BLE001 - this file only (as mmdeploy.isolate reports it)
                rows.append({**_error(src, exc, n + 1), **tags})
        else:
            try:
                got = isolate.call(src["path"], job, (src["path"], spec), timeout)
            except Exception as exc:  # noqa: BLE001 - a crash or a timeout: this file only
                got = {"error": reason(exc)}
            if "error" in got:
                rows.append(_error(src, got["error"], 1))
            else:
                rows.append({"src": src, "audio": got["audio"], "video": got["video"], "error": None,
                             "window": got.get("window"), "timings_ms": got["timings_ms"], "_rows": 1})
        if len(rows) >= out_rows:
            yield _pack(rows, spec)
            rows = []
    if rows:
        yield _pack(rows, spec)


def _mark_end(rows: list[dict[str, Any]], src: dict, n: int, tags: dict | None = None) -> None:
    """Put the file's (segment's) row count on its last row if that is still in the buffer, else add a
    count-only row (a segment's count may be 0)."""
    if n and rows and rows[-1].get("src") is src and rows[-1].get("_rows") == 0:
        rows[-1]["_rows"] = n
    else:
        rows.append({"src": src, **(tags or {}), "end_only": True, "_rows": n})


def _error(src: dict, exc_or_reason, n: int) -> dict[str, Any]:
    text = exc_or_reason if isinstance(exc_or_reason, str) else reason(exc_or_reason)
    return {"src": src, "error": text, "_rows": n}


def _pack(rows: list[dict[str, Any]], spec) -> dict[str, np.ndarray]:
    """Feature rows -> a numpy batch (fixed-shape arrays; absent inputs as zeros with a flag)."""
    a_shape, v_shape = (1, *spec.spectrogram_shape), tuple(spec.frames_shape)
    audio = np.zeros((len(rows), *a_shape), np.float32)
    video = np.zeros((len(rows), *v_shape), np.float32)
    has_a = np.zeros(len(rows), bool)
    has_v = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        if r.get("audio") is not None:
            audio[i], has_a[i] = r["audio"], True
        if r.get("video") is not None:
            video[i], has_v[i] = r["video"], True
    meta = [json.dumps({k: v for k, v in r.items() if k not in ("audio", "video")}) for r in rows]
    return {"meta": np.array(meta, dtype=object), "audio": audio, "video": video,
            "has_audio": has_a, "has_video": has_v}


class Classifier:
    """Inference actor: one Predictor, feature rows -> RESULTS rows as JSON (with `_rows`)."""

    def __init__(self, run: str, backend: str, top_k: int, model: str, threads: int = 1):
        from mmdeploy.pipeline import load_model

        self.predictor = load_model(run, backend, threads)  # torch only for a torch backend
        self.top_k, self.model = top_k, model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from mmdeploy.pipeline import classify_items

        metas = [json.loads(str(m)) for m in batch["meta"]]
        ok = [i for i, m in enumerate(metas) if not m.get("error") and not m.get("end_only")]
        results: dict[int, dict[str, Any]] = {}
        if ok:
            items = [{"file": metas[i]["src"]["path"], "audio": batch["audio"][i] if batch["has_audio"][i] else None,
                      "video": batch["video"][i] if batch["has_video"][i] else None,
                      "window": metas[i].get("window"), "timings_ms": metas[i]["timings_ms"]} for i in ok]
            results = dict(zip(ok, classify_items(items, self.predictor, self.top_k)))
        out = []
        for i, m in enumerate(metas):
            src = Source(**m["src"])
            if m.get("end_only"):
                row = {"file_id": src.file_id, "_end_only": True}
            elif i in results:
                row = result_row(results[i], src, self.model)
            else:
                row = error_row(src, m["error"], self.model)
            row["_rows"] = m["_rows"]
            if m.get("segment"):
                row["_segment"] = m["segment"]
            if m.get("decoding") and not m.get("end_only"):
                row["decoding"] = m["decoding"]
            out.append(json.dumps(row))
        return {"row": np.array(out, dtype=object)}


# ---- the driver ------------------------------------------------------------------------------------------
def blocks(inputs: list[dict[str, Any]], per_block: int) -> list[list[dict[str, Any]]]:
    """Decode inputs -> the decode tasks' inputs: `per_block` files together; a segment alone (its own task)."""
    out, files = [], []
    for x in inputs:
        if "segment" in x:
            out.append([x])
        else:
            files.append(x)
            if len(files) == per_block:
                out.append(files)
                files = []
    return out + ([files] if files else [])


def _dataset(inputs: list[dict[str, Any]], job: Job, model: str, spec_json: str, per_block: int, decoders: int,
             actors: int, gpus: float, actor_cpus: float, decode_job: Callable | None, retries: int = 1,
             classifier: type = Classifier):
    import pyarrow as pa
    import ray.data

    tables = [pa.table({"source": [json.dumps(x) for x in block]}) for block in blocks(inputs, per_block)]
    with warnings.catch_warnings():  # max_retries/max_restarts are plain Ray remote args (deprecated spelling)
        warnings.simplefilter("ignore")
        ds = ray.data.from_arrow(tables)
        ds = ds.map_batches(decode_batch, batch_size=None, batch_format="numpy",  # one task per block
                            zero_copy_batch=True,
                            fn_kwargs={"spec_json": spec_json, "window": job.window, "hop": job.hop,
                                       "timeline": job.timeline, "job": decode_job,
                                       "options": job.options, "timeout": job.timeout},
                            compute=ray.data.TaskPoolStrategy(size=decoders), num_cpus=1, max_retries=retries)
        ds = ds.map_batches(classifier, batch_size=INFER_BATCH, batch_format="numpy",
                            fn_constructor_kwargs={"run": str(job.model), "backend": job.backend,
                                                   "top_k": job.top_k, "model": model,
                                                   "threads": max(1, int(actor_cpus))},
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=actor_cpus,
                            num_gpus=gpus, max_restarts=1, max_task_retries=1)
    return ds


def run_ray(todo: list[Source], job: Job, model: str, files_done: Callable[[list[dict]], None],
            address: str | None = None, actors: int | None = None, decoders: int | None = None,
            gpus_per_actor: float | None = None, actor_cpus: float | None = None,
            object_store_mb: int = OBJECT_STORE_MB, decode_batch_files: int = DECODE_BATCH,
            decode_job: Callable | None = None, token_file: str | None = None,
            classifier: type = Classifier) -> float:
    """Classify `todo` on Ray; complete files' rows go to `files_done`. Returns the start-up seconds
    (joining or starting Ray; `token_file`: the cluster's auth token). Defaults: one actor per GPU (or one
    on a CPU-only cluster), decode tasks on every CPU the actors leave. `classifier` replaces the inference
    actor's class (tests)."""
    import ray

    from mmdeploy.bundle import load_bundle

    spec_json = load_bundle(job.model, with_model=False).spec.to_json()
    local_cpus = cpu_count()
    start = connect(address, cpus=None if address else local_cpus + 1,  # +1: the actor, as classify's main process
                    token_file=token_file)
    configure_data(object_store_mb)
    gpu = uses_gpu(job.backend)
    resources = ray.cluster_resources()
    if gpu and resources.get("GPU", 0) <= 0:
        raise BackendUnavailable(f"backend {job.backend}: needs a GPU, and the Ray cluster has none "
                                 "(pick --backend onnxruntime or torch, or add GPU nodes)")
    gpus = (gpus_per_actor if gpus_per_actor is not None else 1.0) if gpu else 0.0
    actors = actors or (max(1, int(resources.get("GPU", 0) / max(gpus, 1e-9))) if gpu else 1)
    actor_cpus = actor_cpus if actor_cpus is not None else 1.0
    free = int(resources.get("CPU", 1) - actors * actor_cpus)
    decoders = decoders or max(1, free)
    completed: set[str] = set()
    by_id = {s.file_id: s for s in todo}
    inputs = plan_sources(todo, job, spec_json, decoders) if job.timeline else [s.__dict__ for s in todo]

    def stream(inputs: list[dict[str, Any]], per_block: int, retries: int) -> None:
        assembler = Assembler()
        ds = _dataset(inputs, job, model, spec_json, per_block, decoders, actors, gpus, actor_cpus, decode_job,
                      retries, classifier)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for text in batch["row"]:
                row = json.loads(str(text))
                fid = row["file_id"]
                if fid in completed:
                    continue  # a retried task sent this file again
                rows = assembler.add(row)
                if rows is not None:  # [] only for a split file none of whose segments held a window
                    completed.add(fid)
                    files_done(rows or [error_row(by_id[fid], NO_WINDOW, model)])

    stream(inputs, decode_batch_files, retries=1)
    lost = [x for x in inputs if x["file_id"] not in completed]  # a lost split file: all of its segments again
    if lost and len({x["file_id"] for x in lost}) < len(todo):
        stream(lost, 1, retries=0)  # one file per task, no retry: only the file that kills its worker is lost
        lost = [x for x in lost if x["file_id"] not in completed]
    elif lost:
        raise MmdeployError(f"every Ray decode task failed ({len(todo)} files); is mmdeploy installed on every "
                            "node, and can the workers read the input paths? See the Ray logs")
    for fid in dict.fromkeys(x["file_id"] for x in lost):
        files_done([error_row(by_id[fid], LOST, model)])
    return start
