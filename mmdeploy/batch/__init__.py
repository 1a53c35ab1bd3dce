"""Archives -> a Parquet dataset of results: `mmdeploy batch INPUT... --model RUN --out RESULTS`.

INPUT is a folder (searched recursively), a glob, a media file, or a manifest (.csv / .parquet with a
`path` column; relative paths are read from the manifest's folder; every other column is carried into
the results, renamed `input_<name>` where it would clash with a result field). RESULTS is a folder of
Parquet parts (`part-*.parquet`, one schema: `parquet.schema()`, the result shape of mmdeploy/results.py)
plus `_batch.json` (the options the results were made with); any Parquet reader opens the folder as one
table (files starting with `_` or `.` are not data).

One row per file (or, with --window/--hop, one row per window; the rows of a file share its
`file_id`), with the fields of `mmdeploy classify --json` (`file` is called `path` here, as absolute
path) and the resume key: `file_id` = hash(path, size, mtime_ns), `model_id` = the bundle's weights
digest. A file that cannot be decoded is one row with `error` set and the result fields null; in a
timeline, a file that fails mid-way keeps the windows decoded before the failure and ends with its error
row.

Engines (the decode, features, batching and predict stages are mmdeploy/pipeline.py's, never a second copy):
- `local` (local_engine.py): pipeline.decode_files (worker processes that isolate decoder crashes; batched
  inference here); timelines: one isolated window stream per worker thread, through pipeline.window_batches.
- `ray` (ray_engine.py): Ray Data.

Files: inputs.py (INPUT arguments -> sources, the resume key), parquet.py (the schema, parts, what a RESULTS
folder holds), rows.py (results <-> rows), run.py (the run: skip, engine, write), the two engines.

Long runs: rows are written in parts of whole files (`--part-rows`, or every `FLUSH_S` seconds), each
written to a temporary name and renamed, so a killed run loses at most the rows not yet flushed. A
rerun with the same RESULTS skips every file whose (file_id, model_id) is already written, failed files
included (they are rows too); a changed file (size or mtime) or another model is classified again.
"""
from __future__ import annotations

from mmdeploy.batch.inputs import Job, Source, identify, model_id, read_inputs
from mmdeploy.batch.parquet import PartWriter, read_results, schema
from mmdeploy.batch.rows import Assembler, error_row, result_row, to_result
from mmdeploy.batch.run import Summary, run_batch

__all__ = ["Assembler", "Job", "PartWriter", "Source", "Summary", "error_row", "identify", "model_id", "read_inputs",
           "read_results", "result_row", "run_batch", "schema", "to_result"]
