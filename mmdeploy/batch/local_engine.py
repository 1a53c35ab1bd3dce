"""The `local` engine: the pipeline's isolated decoders on this machine, batched inference here."""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator

from mmdeploy import pipeline
from mmdeploy.batch.inputs import Job, Source
from mmdeploy.batch.rows import NO_WINDOW, error_row, result_row
from mmdeploy.errors import MmdeployError, reason
from mmdeploy.settings import cpu_count

CHUNK = 1024  # files handed to the decode pool at a time (bounds what the driver holds)


def run_local(todo: list[Source], job: Job, model: str, files_done: Callable[[list[dict]], None]) -> None:
    """pipeline.decode_files over chunks of files (or isolated timeline streams), rows to `files_done`."""
    from mmdeploy.classify import classify_files

    predictor = pipeline.load_model(job.model, job.backend)  # torch only for a torch backend
    if job.timeline:
        run_local_timelines(todo, job, model, predictor, files_done)
        return
    for i in range(0, len(todo), CHUNK):
        chunk = {s.path: s for s in todo[i:i + CHUNK]}
        for result in classify_files(list(chunk), predictor, top_k=job.top_k, workers=job.workers,
                                     timeout=job.timeout, options=job.options):
            files_done([result_row(result, chunk[result["file"]], model)])


def run_local_timelines(todo: list[Source], job: Job, model: str, predictor,
                        files_done: Callable[[list[dict]], None]) -> None:
    """One isolated window stream per worker thread, in pipeline.window_batches; inference under a lock.
    With fewer files than decode workers, each file's timeline is cut at keyframes and decoded by its share of
    the workers (pipeline.plan_windows, as `classify`'s timeline); every row says how (`decoding`). A file that
    fails mid-way keeps the windows decoded before the failure, then its error row."""
    lock = threading.Lock()
    cores = job.workers or cpu_count()
    workers = max(1, min(cores, len(todo)))
    per_file = max(1, cores // workers)  # decode workers a file's timeline may use (one long file: all of them)

    def one_file(src: Source) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        decoding = None
        try:
            plan = pipeline.plan_windows(src.path, predictor.spec, job.window, job.hop, per_file, job.timeout)
            decoding = plan.summary()
            items = pipeline.decode_windows(src.path, predictor.spec, job.window, job.hop, job.timeout,
                                            options=job.options, plan=plan)
            with contextlib.closing(pipeline.window_batches(items)) as batches:
                for batch in batches:
                    with lock:
                        results = pipeline.classify_items(batch, predictor, job.top_k)
                    rows.extend(result_row(r, src, model) for r in results)
            if not rows:
                rows.append(error_row(src, NO_WINDOW, model))
        except MmdeployError as exc:
            rows.append(error_row(src, reason(exc), model))
        for row in rows:
            row["decoding"] = decoding
        return rows

    queue = iter(todo)
    with ThreadPoolExecutor(workers) as pool:
        pending = {pool.submit(one_file, s) for s in _take(queue, 2 * workers)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                files_done(future.result())
            pending |= {pool.submit(one_file, s) for s in _take(queue, len(finished))}


def _take(it: Iterator, n: int) -> list:
    out = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out
