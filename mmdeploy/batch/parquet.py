"""A RESULTS folder: the Parquet schema (the result shape of mmdeploy/results.py plus the resume key), parts
written atomically, the options it was made with, what it already holds."""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from mmdeploy.errors import ConfigError

PART_ROWS = 512  # rows per part file (whole files only; a timeline file's rows are never split)
FLUSH_S = 30.0  # a part is also written when rows have waited this long
OPTIONS_FILE = "_batch.json"
KEY_FIELDS = ("path", "file_id", "size", "mtime_ns", "model_id")  # the file (absolute path) and the resume key


def schema(carried=None):
    """The RESULTS schema (pyarrow): the key, results.ClassifyResult's fields but `file`, `error`, then the
    carried manifest columns. See the README."""
    import pyarrow as pa

    from mmdeploy.results import Decoding, arrow_fields, arrow_type

    key = [pa.field("path", pa.string()),       # absolute path (classify's `file`)
           pa.field("file_id", pa.string()),    # 16 hex: hash of path, size, mtime_ns (all windows of a file)
           pa.field("size", pa.int64()),
           pa.field("mtime_ns", pa.int64()),
           pa.field("model_id", pa.string())]   # the bundle's weights sha256 (16 hex)
    tail = [pa.field("error", pa.string()),
            pa.field("decoding", arrow_type(Decoding))]  # how a timeline file was decoded (Ray engine; else null)
    return pa.schema(key + arrow_fields() + tail + list(carried or []))


def _result_fields() -> tuple[str, ...]:
    from mmdeploy.results import ClassifyResult

    return (*KEY_FIELDS, *(n for n in ClassifyResult.model_fields if n != "file"), "error", "decoding")


RESULT_FIELDS = _result_fields()  # = schema().names without the carried columns


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


def read_results(out: str | Path):
    """RESULTS folder -> one pyarrow Table (all parts)."""
    import pyarrow.parquet as pq

    parts = sorted(Path(out).glob("part-*.parquet"))
    if not parts:
        raise ConfigError(f"{out}: no results parts; run `mmdeploy batch INPUT --model RUN --out {out}` first")
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")


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
