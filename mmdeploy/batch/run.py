"""The whole run: list inputs, skip what RESULTS holds, classify the rest on an engine, write parts."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mmdeploy.batch.inputs import Job, identify, model_id, read_inputs
from mmdeploy.batch.parquet import PART_ROWS, PartWriter, check_options, done_ids
from mmdeploy.batch.rows import error_row
from mmdeploy.errors import ConfigError, MediaError


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


def run_batch(inputs: list[str], out: str | Path, job: Job, engine: str = "local", limit: int | None = None,
              part_rows: int = PART_ROWS, quiet: bool = False, ray_options: dict[str, Any] | None = None,
              on_error: Callable[[str], None] | None = None) -> Summary:
    """The whole run: list inputs, skip what RESULTS holds, classify the rest on `engine`, write parts."""
    from mmdeploy.progress import Progress

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
    progress = Progress(quiet)
    missing = [s for s in todo if s.missing]
    todo = [s for s in todo if not s.missing]
    progress.start(len(todo) + len(missing), "files")

    def files_done(rows: list[dict[str, Any]]) -> None:
        writer.add(rows)
        failed = int(rows[-1]["error"] is not None)
        summary.done += 1
        summary.failed += failed
        if summary.done == 1:
            summary.first_s = time.perf_counter() - t0
        if failed and on_error:
            on_error(f"{rows[-1]['path']}: {rows[-1]['error']}")
        rate = summary.done / max(time.perf_counter() - t0, 1e-9)
        progress.advance(1, f"({summary.failed} failed)  {rate:.1f} files/s")

    try:
        for s in missing:
            files_done([error_row(s, s.missing, mid)])
        if todo:
            if engine == "local":
                from mmdeploy.batch.local_engine import run_local

                run_local(todo, job, mid, files_done)
            else:
                from mmdeploy.batch.ray_engine import run_ray

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
