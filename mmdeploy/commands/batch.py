"""`mmdeploy batch INPUT... --model RUN --out RESULTS [--engine local|ray]`: archives -> Parquet results."""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer

from mmdeploy.commands.options import backend_option

SHOWN_ERRORS = 20  # failed files printed on stderr; all of them are rows in RESULTS


class Engine(str, enum.Enum):
    local = "local"
    ray = "ray"


def register(app: typer.Typer) -> None:
    """Add `batch` to the app."""

    @app.command()
    def batch(
        inputs: list[str] = typer.Argument(..., help="Folders (recursive), globs, files, or manifests (.csv/.parquet "
                                                     "with a `path` column; other columns are carried through)."),
        out: Path = typer.Option(..., "--out", help="Results folder (Parquet parts); a rerun resumes it."),
        model: Optional[Path] = typer.Option(None, "--model", help="Run folder (bundle); default: newest under runs/."),
        engine: Engine = typer.Option(Engine.local, "--engine", help="local: process pool on this machine; "
                                                                     "ray: Ray Data (local instance or --address)."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray: join this cluster (`ray start --head` "
                                                                      "prints it; 'auto' = the local one); none: a "
                                                                      "local instance on 127.0.0.1 only."),
        ray_token_file: Optional[Path] = typer.Option(None, "--ray-token-file", help="Ray: the cluster's auth token "
                                                      "(RAY_AUTH_MODE=token clusters; `ray get-auth-token` prints it)."),
        backend: str = backend_option(help="Runtime, as in classify."),
        top_k: int = typer.Option(5, "--top-k", min=1, help="How many classes to list per row."),
        window: Optional[float] = typer.Option(None, "--window", min=0.01, help="Timeline: one row per window of "
                                                                                "this many seconds."),
        hop: Optional[float] = typer.Option(None, "--hop", min=0.01, help="Timeline: step between windows, seconds."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="local: decode processes (default: "
                                                                             "cores); ray: decode tasks at once "
                                                                             "(default: the CPUs actors leave)."),
        actors: Optional[int] = typer.Option(None, "--actors", min=1, help="ray: inference actors (default: one "
                                                                           "per GPU, or one)."),
        gpus_per_actor: Optional[float] = typer.Option(None, "--gpus-per-actor", min=0.0,
                                                       help="ray: GPUs per actor for a GPU backend (default 1)."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N files."),
        timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="Seconds a file's window may take to "
                                                "decode (default: $MMDEPLOY_DECODE_TIMEOUT_S, else 60)."),
        part_rows: int = typer.Option(512, "--part-rows", min=1, help="Rows per Parquet part (what a kill can "
                                                                      "lose at most)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress line."),
    ) -> None:
        """Classify a whole archive into a Parquet dataset: one row per file (or per window), resumable.

        The rows have the fields of `classify --json` plus the resume key (file_id, model_id); a file that
        cannot be decoded is a row with `error`. Rerun with the same --out to continue a stopped run."""
        from mmdeploy.batch import Job, run_batch
        from mmdeploy.bundle import latest_bundle
        from mmdeploy.pipeline import decode_options
        from mmdeploy.settings import Settings

        settings = Settings.from_env()  # the edge: read once, passed down

        shown = 0

        def on_error(message: str) -> None:
            nonlocal shown
            shown += 1
            if shown <= SHOWN_ERRORS:
                typer.echo(f"error: {message}", err=True)
            elif shown == SHOWN_ERRORS + 1:
                typer.echo(f"error: ... more failed files: see the `error` column in {out}", err=True)

        if engine is Engine.local and (address or actors or gpus_per_actor is not None or ray_token_file):
            typer.echo("note: --address/--actors/--gpus-per-actor/--ray-token-file apply to --engine ray only",
                       err=True)
        job = Job(model=model if model is not None else latest_bundle("runs"), backend=backend, top_k=top_k,
                  window=window, hop=hop, timeout=timeout if timeout is not None else settings.decode_timeout_s,
                  workers=workers, options=decode_options(settings))
        ray_options = {"address": address, "actors": actors, "decoders": workers, "gpus_per_actor": gpus_per_actor,
                       "token_file": ray_token_file}
        summary = run_batch(inputs, out, job, engine=engine.value, limit=limit, part_rows=part_rows, quiet=quiet,
                            ray_options=ray_options, on_error=on_error)
        typer.echo(summary.line(out))
