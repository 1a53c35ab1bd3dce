"""`mmdeploy classify FILE...`: predictions for files, folders and globs; timelines with --window/--hop."""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Optional

import typer


class Backend(str, enum.Enum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    """Add `classify` to the app."""

    @app.command()
    def classify(
        files: list[str] = typer.Argument(..., help="Media files, folders (searched recursively) or globs."),
        model: Optional[Path] = typer.Option(None, "--model", help="Run folder (bundle); default: newest under runs/."),
        backend: Backend = typer.Option(Backend.auto, "--backend", help="Runtime; auto picks the best available."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line (per file; per window too "
                                                          "with --window, then the file's object with `windows`)."),
        top_k: int = typer.Option(5, "--top-k", min=1, help="How many classes to list."),
        window: Optional[float] = typer.Option(None, "--window", min=0.01, help="Timeline: window length, seconds "
                                                                                "(default: the model's window)."),
        hop: Optional[float] = typer.Option(None, "--hop", min=0.01, help="Timeline: step between windows, seconds "
                                                                          "(default: the window)."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode processes (default: all cores "
                                                                                   "when more than 16 files)."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Classify at most N files."),
    ) -> None:
        """Classify video (or audio-only / video-only) files: label, score, top-k, each modality's opinion.

        A file is classified from its first model window. With --window/--hop: from every window (timeline).

        Timeline output: one line per window as it is ready, then the file's result (mean of its windows).

        A bad file prints `error: FILE: reason` on stderr; the others are still classified; exit code 2."""
        import torch

        from mmdeploy.bundle import latest_bundle
        from mmdeploy.classify import (classify_files, classify_timeline, expand_paths, format_result,
                                       format_window, inference_threads)
        from mmdeploy.errors import MediaError
        from mmdeploy.runtime import load_predictor

        threads = inference_threads()
        torch.set_num_threads(threads)
        predictor = load_predictor(model if model is not None else latest_bundle("runs"), backend.value,
                                   threads=threads)
        paths, errors = expand_paths(files, limit)
        failed = bool(errors)
        for err in errors:
            typer.echo(f"error: {err}", err=True)

        def emit(result: dict) -> None:
            nonlocal failed
            if "error" in result:
                failed = True
                typer.echo(f"error: {result['file']}: {result['error']}", err=True)
            elif as_json:
                typer.echo(json.dumps(result))
            elif "top_k" in result:
                typer.echo(format_result(result))
            else:
                typer.echo(format_window(result))

        if window is None and hop is None:
            for result in classify_files(paths, predictor, top_k=top_k, workers=workers):
                emit(result)
        else:
            for path in paths:
                try:
                    for result in classify_timeline(path, predictor, window=window, hop=hop, top_k=top_k):
                        emit(result)
                except MediaError as exc:
                    emit({"file": str(path), "error": exc.reason})
        if failed:
            raise typer.Exit(2)
