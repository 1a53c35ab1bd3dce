"""Archives -> a Parquet dataset of results: `mmdeploy batch INPUT... --model RUN --out RESULTS`.

INPUT is a folder (searched recursively), a glob, a media file, or a manifest (.csv / .parquet with a
`path` column; relative paths are read from the manifest's folder; every other column is carried into
the results, renamed `input_<name>` where it would clash with a result field). RESULTS is a folder of
Parquet parts (`part-*.parquet`, one schema: `schema()` below) plus `_batch.json` (the options the results
were made with); any Parquet reader opens the folder as one table (files starting with `_` or `.`
are not data).

One row per file (or, with --window/--hop, one row per window; the rows of a file share its
`file_id`), with the fields of `mmdeploy classify --json` (`file` is called `path` here, as absolute
path) and the resume key: `file_id` = hash(path, size, mtime_ns), `model_id` = the bundle's weights
digest. A file that cannot be decoded is one row with `error` set and the result fields null; in a
timeline, a file that fails mid-way keeps the windows decoded before the failure and ends with its error
row.

Engines (the decode, features and predict functions are classify.py's, never a second copy):
- `local`: classify.classify_files (worker processes that isolate decoder crashes; batched inference
  here); timelines: one isolated decode stream per worker thread.
- `ray`: Ray Data; see mmdeploy/batch_ray.py.

Long runs: rows are written in parts of whole files (`--part-rows`, or every `FLUSH_S` seconds), each
written to a temporary name and renamed, so a killed run loses at most the rows not yet flushed. A
rerun with the same RESULTS skips every file whose (file_id, model_id) is already written, failed files
included (they are rows too); a changed file (size or mtime) or another model is classified again.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from mmdeploy.errors import ConfigError, MediaError, MmdeployError

PART_ROWS = 512  # rows per part file (whole files only; a timeline file's rows are never split)
FLUSH_S = 30.0  # a part is also written when rows have waited this long
CHUNK = 1024  # local engine: files handed to the decode pool at a time (bounds what the driver holds)
MANIFEST_SUFFIXES = (".csv", ".parquet")
OPTIONS_FILE = "_batch.json"


def schema(carried=None):
    """The RESULTS schema (pyarrow), with the carried manifest columns appended. See the README."""
    import pyarrow as pa

    probs = pa.map_(pa.string(), pa.float64())
    opinion = pa.struct([("label", pa.string()), ("score", pa.float64()), ("agrees", pa.bool_()),
                         ("probs", probs)])
    fields = [
        ("path", pa.string()),            # absolute path (classify's `file`)
        ("file_id", pa.string()),         # 16 hex: hash of path, size, mtime_ns (one id for all windows of a file)
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("model_id", pa.string()),        # the bundle's weights sha256 (16 hex)
        ("window", pa.struct([("start", pa.float64()), ("end", pa.float64())])),
        ("label", pa.string()),
        ("score", pa.float64()),
        ("probs", probs),
        ("top_k", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
        ("modalities", pa.list_(pa.string())),
        ("per_modality", pa.struct([("audio", opinion), ("video", opinion)])),
        ("backend", pa.string()),
        ("timings_ms", pa.struct([("decode", pa.float64()), ("features", pa.float64()), ("infer", pa.float64())])),
        ("error", pa.string()),
    ]
    return pa.schema([pa.field(n, t) for n, t in fields] + list(carried or []))


RESULT_FIELDS = ("path", "file_id", "size", "mtime_ns", "model_id", "window", "label", "score", "probs", "top_k",
                 "modalities", "per_modality", "backend", "timings_ms", "error")


# ---- inputs ----------------------------------------------------------------------------------------
@dataclass
class Source:
    """One input file: its identity (the resume key without the model) and the manifest columns it carries."""
    path: str
    file_id: str
    size: int
    mtime_ns: int
    carry: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None  # why it cannot be read at all (then no decode is tried)


def identify(path: str, carry: dict[str, Any] | None = None) -> Source:
    """stat the file -> Source; file_id = blake2b(path, size, mtime_ns), 8 bytes as hex."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
        size, mtime, missing = st.st_size, st.st_mtime_ns, None
    except OSError:
        size, mtime, missing = -1, -1, "no such file"
    key = hashlib.blake2b(f"{path}\0{size}\0{mtime}".encode(), digest_size=8).hexdigest()
    return Source(path, key, size, mtime, carry or {}, missing)


def read_inputs(inputs: Iterable[str], limit: int | None = None) -> tuple[list[tuple[str, dict]], list, list[str]]:
    """INPUT arguments -> ([(path, carried columns)], carried pyarrow fields, errors as 'PATH: reason').
    Manifests give their rows; folders, globs and files go through classify.expand_paths. Paths are
    deduplicated (first wins), at most `limit`."""
    from mmdeploy.classify import expand_paths

    rows: list[tuple[str, dict]] = []
    carried: dict[str, Any] = {}
    errors: list[str] = []
    plain: list[str] = []

    def flush_plain() -> None:
        files, errs = expand_paths(plain)
        rows.extend((str(p), {}) for p in files)
        errors.extend(str(e) for e in errs)
        plain.clear()

    for arg in inputs:
        path = Path(arg)
        if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            flush_plain()
            table = read_manifest_table(path)
            for f in table.schema:
                if f.name != "path":
                    name = f"input_{f.name}" if f.name in RESULT_FIELDS else f.name
                    carried.setdefault(name, f.with_name(name))
            root = path.parent
            names = [n for n in table.column_names if n != "path"]
            for rec in table.to_pylist():
                p = rec["path"]
                if not p:
                    errors.append(f"{path}: a row has an empty path")
                    continue
                full = p if os.path.isabs(p) else str(root / p)
                rows.append((full, {(f"input_{n}" if n in RESULT_FIELDS else n): rec[n] for n in names}))
        else:
            plain.append(arg)
    flush_plain()
    seen: set[str] = set()
    unique = []
    for p, carry in rows:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append((p, carry))
    return (unique[:limit] if limit is not None else unique), list(carried.values()), errors


def read_manifest_table(path: Path):
    """A CSV or Parquet manifest -> pyarrow Table with a string `path` column."""
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"path": pa.string()}))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the manifest ({str(exc).splitlines()[0]})") from None
    if "path" not in table.column_names:
        raise ConfigError(f"{path}: manifest has no `path` column (columns: {', '.join(table.column_names)}); "
                          "add one with the media file paths")
    if not pa.types.is_string(table.schema.field("path").type):
        table = table.set_column(table.column_names.index("path"), "path", table["path"].cast(pa.string()))
    return table


# ---- the model id and the options a RESULTS folder was made with -----------------------------------
def model_id(run: str | Path) -> str:
    """The bundle's weights digest as recorded in model.json (else hashed from the file), 16 hex."""
    from mmdeploy.bundle import read_meta

    meta = read_meta(run)
    digest = (meta.get("weights") or {}).get("sha256") if isinstance(meta.get("weights"), dict) else None
    if not digest:
        h = hashlib.sha256()
        with open(Path(run) / "model.safetensors", "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return digest[:16]


def check_options(out: Path, options: dict[str, Any]) -> None:
    """Write RESULTS/_batch.json, or refuse a rerun whose window/hop differ from the ones written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / OPTIONS_FILE
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            before = None
        if isinstance(before, dict):
            for key in ("window", "hop"):
                if before.get(key) != options.get(key):
                    raise ConfigError(f"{out}: holds results made with --{key} {before.get(key)}, this run asks for "
                                      f"{options.get(key)}; use the same options or another --out")
    tmp = out / f".{OPTIONS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(options, indent=2) + "\n")
    os.replace(tmp, path)


def done_ids(out: Path, model: str) -> set[str]:
    """file_ids already written to RESULTS for this model (failed files included); leftover temp parts
    of a killed run are removed."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    if not out.is_dir():
        return done
    for tmp in out.glob(".tmp-*"):
        tmp.unlink(missing_ok=True)
    for part in sorted(out.glob("part-*.parquet")):
        try:
            t = pq.read_table(part, columns=["file_id", "model_id"])
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise ConfigError(f"{part}: unreadable results part ({str(exc).splitlines()[0]}); delete it and "
                              "rerun (its files are classified again)") from None
        ids = np.asarray(t["file_id"].to_numpy(zero_copy_only=False))
        models = np.asarray(t["model_id"].to_numpy(zero_copy_only=False))
        done.update(ids[models == model].tolist())
    return done


# ---- rows --------------------------------------------------------------------------------------------
def result_row(result: dict[str, Any], src: Source, model: str) -> dict[str, Any]:
    """A classify result dict (or {"file", "error"}) for `src` -> one RESULTS row (missing fields null)."""
    row = {k: result.get(k) for k in RESULT_FIELDS}
    row.update(path=src.path, file_id=src.file_id, size=src.size, mtime_ns=src.mtime_ns, model_id=model)
    row.update(src.carry)
    return row


def error_row(src: Source, reason: str, model: str) -> dict[str, Any]:
    return result_row({"error": reason}, src, model)


def to_result(row: dict[str, Any]) -> dict[str, Any]:
    """A RESULTS row (as read back, e.g. from `read_results`) -> the classify --json shape."""
    out = {"file": row["path"]}
    if row.get("error") is not None:
        return {**out, "error": row["error"]}
    out.update({k: row[k] for k in ("window", "label", "score") if k in row})
    out["probs"] = dict(row["probs"])
    out.update(top_k=row["top_k"], modalities=row["modalities"],
               per_modality={m: {**v, "probs": dict(v["probs"])} for m, v in (row["per_modality"] or {}).items()
                             if v is not None},
               backend=row["backend"], timings_ms=row["timings_ms"])
    return out


def read_results(out: str | Path):
    """RESULTS folder -> one pyarrow Table (all parts)."""
    import pyarrow.parquet as pq

    parts = sorted(Path(out).glob("part-*.parquet"))
    if not parts:
        raise ConfigError(f"{out}: no results parts; run `mmdeploy batch INPUT --model RUN --out {out}` first")
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


# ---- writing -------------------------------------------------------------------------------------------
class PartWriter:
    """Rows of whole files -> RESULTS/part-<run>-<n>.parquet, each written under a temp name and renamed."""

    def __init__(self, out: Path, carried=(), part_rows: int = PART_ROWS, flush_s: float = FLUSH_S):
        self.out, self.part_rows, self.flush_s = Path(out), part_rows, flush_s
        self.schema = schema(carried)
        self.rows: list[dict[str, Any]] = []
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.parts = 0
        self.oldest = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        if not self.rows:
            self.oldest = time.monotonic()
        self.rows.extend(rows)
        if len(self.rows) >= self.part_rows or time.monotonic() - self.oldest > self.flush_s:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        name = f"part-{self.run}-{self.parts:06d}.parquet"
        tmp = self.out / f".tmp-{name}"
        pq.write_table(table, tmp)
        os.replace(tmp, self.out / name)
        self.parts += 1
        self.rows = []


class Assembler:
    """Rows arrive window by window, possibly out of order and (after a retried task) twice; a file is
    complete once as many distinct rows as its count (`_rows`, carried on one of them, or on a row with
    `_end_only`) have arrived. Only complete files go to the writer."""

    def __init__(self):
        self.pending: dict[str, dict[Any, dict[str, Any]]] = {}
        self.expected: dict[str, int] = {}

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Add one row; the file's rows (windows by start, an error row last) once complete, else None."""
        fid = row["file_id"]
        n = row.pop("_rows", 0)
        rows = self.pending.setdefault(fid, {})
        if n:
            self.expected[fid] = n
        if not row.pop("_end_only", False):
            key = "error" if row.get("error") is not None else (row.get("window") or {}).get("start")
            rows[key] = row
        if self.expected.get(fid) != len(rows):
            return None
        del self.pending[fid], self.expected[fid]
        return sorted(rows.values(), key=lambda r: (r.get("error") is not None,
                                                    (r.get("window") or {}).get("start") or 0.0))


class Progress:
    """files done / total, files/s, ETA on stderr: redrawn in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, stream=None, quiet: bool = False):
        self.total, self.done, self.failed = total, 0, 0
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.t0, 1e-9)

    def update(self, files: int, failed: int = 0) -> None:
        self.done += files
        self.failed += failed
        now = time.perf_counter()
        if self.quiet or now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        line = (f"{self.done}/{self.total} files ({self.failed} failed)  {rate:.1f} files/s  "
                f"ETA {_clock(eta)}")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet and self.last:
            self.stream.write("\n")


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ---- the run ---------------------------------------------------------------------------------------------
@dataclass
class Summary:
    total: int
    done: int = 0
    failed: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    first_s: float = 0.0  # until the first file was done: listing, engine start-up (Ray init, actors), model load
    parts: int = 0

    @property
    def rate(self) -> float:
        """Files per second once started: from the first file done to the last."""
        return (self.done - 1) / (self.wall_s - self.first_s) if self.done > 1 and self.wall_s > self.first_s else 0.0

    def line(self, out: Path) -> str:
        return (f"{out}: {self.done} done ({self.failed} failed), {self.skipped} skipped, {self.total} inputs; "
                f"wall {self.wall_s:.1f} s, first file after {self.first_s:.1f} s, then {self.rate:.1f} files/s")


@dataclass
class Job:
    """What every engine needs to run one batch."""
    model: Path
    backend: str = "auto"
    top_k: int = 5
    window: float | None = None
    hop: float | None = None
    timeout: float | None = 60.0
    workers: int | None = None  # local: decode processes; ray: decode tasks at once

    @property
    def timeline(self) -> bool:
        return self.window is not None or self.hop is not None


def run_batch(inputs: list[str], out: str | Path, job: Job, engine: str = "local", limit: int | None = None,
              part_rows: int = PART_ROWS, quiet: bool = False, ray_options: dict[str, Any] | None = None,
              on_error: Callable[[str], None] | None = None) -> Summary:
    """The whole run: list inputs, skip what RESULTS holds, classify the rest on `engine`, write parts."""
    t0 = time.perf_counter()
    out = Path(out)
    if engine not in ("local", "ray"):
        raise ConfigError(f"--engine {engine!r}: choose local or ray")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; --out names a results folder")
    mid = model_id(job.model)
    listed, carried, errors = read_inputs(inputs, limit)
    for err in errors:
        (on_error or (lambda e: None))(err)
    if not listed:
        raise MediaError(", ".join(inputs), "no input files (" + ("; ".join(errors) or "nothing listed") + ")")
    check_options(out, {"window": job.window, "hop": job.hop})
    done = done_ids(out, mid)
    sources = [identify(p, carry) for p, carry in listed]
    todo = [s for s in sources if s.file_id not in done]
    summary = Summary(total=len(sources), skipped=len(sources) - len(todo))
    writer = PartWriter(out, carried, part_rows)
    progress = Progress(len(todo), quiet=quiet)
    missing = [s for s in todo if s.missing]
    todo = [s for s in todo if not s.missing]

    def files_done(rows: list[dict[str, Any]]) -> None:
        writer.add(rows)
        failed = int(rows[-1]["error"] is not None)
        summary.done += 1
        summary.failed += failed
        if summary.done == 1:
            summary.first_s = time.perf_counter() - t0
        if failed and on_error:
            on_error(f"{rows[-1]['path']}: {rows[-1]['error']}")
        progress.update(1, failed)

    try:
        for s in missing:
            files_done([error_row(s, s.missing, mid)])
        if todo:
            if engine == "local":
                run_local(todo, job, mid, files_done)
            else:
                from mmdeploy.batch_ray import run_ray

                run_ray(todo, job, mid, files_done, **(ray_options or {}))
    except BaseException:
        try:
            writer.flush()  # whatever finished is kept, also on Ctrl-C or an error
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    finally:
        progress.close()
    writer.flush()
    summary.parts = writer.parts
    summary.wall_s = time.perf_counter() - t0
    return summary


# ---- the local engine --------------------------------------------------------------------------------
def run_local(todo: list[Source], job: Job, model: str, files_done: Callable[[list[dict]], None]) -> None:
    """classify.classify_files over chunks of files (or isolated timeline streams), rows to `files_done`."""
    import torch

    from mmdeploy.classify import classify_files, inference_threads
    from mmdeploy.runtime import load_predictor

    threads = inference_threads()
    torch.set_num_threads(threads)
    predictor = load_predictor(job.model, job.backend, threads=threads)
    if job.timeline:
        run_local_timelines(todo, job, model, predictor, files_done)
        return
    for i in range(0, len(todo), CHUNK):
        chunk = {s.path: s for s in todo[i:i + CHUNK]}
        for result in classify_files(list(chunk), predictor, top_k=job.top_k, workers=job.workers,
                                     timeout=job.timeout):
            files_done([result_row(result, chunk[result["file"]], model)])


def window_results(items: list[dict[str, Any]], path: str, predictor, top_k: int) -> list[dict[str, Any]]:
    """A batch of timeline items (classify.window_jobs dicts) -> one classify result per window."""
    from mmdeploy.classify import classify_jobs

    jobs = [{"file": path, "audio": it["audio"], "video": it["video"], "window": {"start": it["start"], "end": it["end"]},
             "timings_ms": {"decode": it["decode"], "features": it["features"]}} for it in items]
    return classify_jobs(jobs, predictor, top_k)


def run_local_timelines(todo: list[Source], job: Job, model: str, predictor,
                        files_done: Callable[[list[dict]], None]) -> None:
    """One isolated window stream per worker thread (mmdeploy.isolate), batched inference under a lock."""
    from mmdeploy.classify import BATCH
    from mmdeploy.isolate import iter_isolated

    lock = threading.Lock()

    def one_file(src: Source) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []

        def classify(items):
            with lock:
                results = window_results(items, src.path, predictor, job.top_k)
            rows.extend(result_row(r, src, model) for r in results)

        items: list[dict[str, Any]] = []
        try:
            with iter_isolated(src.path, predictor.spec, job.window, job.hop, job.timeout) as stream:
                for item in stream:
                    items.append(item)
                    if len(items) == BATCH:
                        classify(items)
                        items = []
            if items:
                classify(items)
            if not rows:
                rows.append(error_row(src, "no window could be decoded", model))
        except MmdeployError as exc:
            if items:
                classify(items)
            rows.append(error_row(src, exc.reason if isinstance(exc, MediaError) else str(exc), model))
        return rows

    workers = max(1, min(job.workers or os.cpu_count() or 1, len(todo)))
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
