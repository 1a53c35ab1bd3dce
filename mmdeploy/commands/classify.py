"""`mmdeploy classify FILE...`: predictions for files, folders and globs; timelines with --window/--hop."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mmdeploy.commands.options import backend_option


def register(app: typer.Typer) -> None:
    """Add `classify` to the app."""

    @app.command()
    def classify(
        files: list[str] = typer.Argument(..., help="Media files, folders (searched recursively) or globs."),
        model: Optional[Path] = typer.Option(None, "--model", help="Run folder (bundle); default: newest under runs/."),
        backend: str = backend_option(),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line (per file; per window too "
                                                          "with --window, then the file's object with `windows`)."),
        top_k: int = typer.Option(5, "--top-k", min=1, help="How many classes to list."),
        window: Optional[float] = typer.Option(None, "--window", min=0.01, help="Timeline: window length, seconds "
                                                                                "(default: the model's window)."),
        hop: Optional[float] = typer.Option(None, "--hop", min=0.01, help="Timeline: step between windows, seconds "
                                                                          "(default: the window)."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decode processes (default: all cores "
                                                  "when more than 16 files; a timeline: all cores share a long file, "
                                                  "cut at keyframes; 1: one pass)."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Classify at most N files."),
        timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="Seconds a file's window may take "
                                                "to decode before it is reported as an error (default: "
                                                "$MMDEPLOY_DECODE_TIMEOUT_S, else 60)."),
        live: bool = typer.Option(False, "--live", help="FILES is one live SOURCE (udp://, rtsp://, srt://, "
                                  "http(s):// or HLS, - for stdin): a line per window as it arrives; `mmdeploy "
                                  "watch --help` has the live options."),
    ) -> None:
        """Classify video (or audio-only / video-only) files: label, score, top-k, each modality's opinion.

        A file is classified from its first model window. With --window/--hop: from every window (timeline).

        Timeline output: one line per window as it is ready, then the file's result (mean of its windows).

        A bad file prints `error: FILE: reason` on stderr (with --json also {"file", "error"} on stdout);
        the others are still classified; exit code 2. Files are decoded in worker processes: a decoder
        crash or hang costs only that file."""
        if live:
            from mmdeploy.commands.live import run_watch
            from mmdeploy.errors import ConfigError

            if len(files) != 1:
                raise ConfigError(f"--live: give one SOURCE (a URL, - for stdin, or a device), got {len(files)}")
            return run_watch(files[0], model, backend, as_json, top_k, window, hop)
        from mmdeploy import preload

        preload.start()  # first: the decode workers' forkserver imports PyAV and numpy while we do the rest
        from mmdeploy.isolate import prestart

        prestart()  # and forks the first worker as soon as it is ready
        from mmdeploy.settings import Settings

        settings = Settings.from_env()  # the edge: read once, passed down
        from mmdeploy.bundle import latest_bundle
        from mmdeploy.classify import classify_files, classify_timeline, format_result, format_window
        from mmdeploy.errors import MediaError
        from mmdeploy.pipeline import (LoadingPredictor, bundle_spec, decode_options, expand_paths, inference_threads,
                                       load_model)

        options = decode_options(settings)
        timeout = timeout if timeout is not None else settings.decode_timeout_s
        threads = inference_threads()
        run = model if model is not None else latest_bundle("runs")
        # the model loads (and the bundle is verified) while the first file decodes with the bundle's spec;
        # torch is imported only for a torch backend (an ONNX Runtime / OpenVINO run never loads it)
        predictor = LoadingPredictor(lambda: load_model(run, backend, threads), bundle_spec(run))
        paths, errors = expand_paths(files, limit)
        failed = False

        def emit(result: dict) -> None:
            nonlocal failed
            predictor.result()  # a bundle that fails to load is the one error printed, before any file's
            if "error" in result:
                failed = True
                typer.echo(f"error: {result['file']}: {result['error']}", err=True)
                if as_json:  # a JSON-lines consumer sees every input once, failed ones too
                    typer.echo(json.dumps({"file": result["file"], "error": result["error"]}))
            elif as_json:
                typer.echo(json.dumps(result))
            elif "top_k" in result:
                typer.echo(format_result(result))
            else:
                typer.echo(format_window(result))

        for err in errors:
            emit({"file": err.path, "error": err.reason})
        if window is None and hop is None:
            for result in classify_files(paths, predictor, top_k=top_k, workers=workers, timeout=timeout,
                                         options=options):
                emit(result)
        else:
            trained = predictor.spec.window_seconds
            if window is not None and abs(window - trained) > 1e-9:
                typer.echo(f"note: --window {window:g}s differs from the model's training window ({trained:g}s): "
                           + ("each window's frames are spread over it and its audio is cut to the model's length"
                              if window > trained else "each window's audio is "
                              + ("repeated" if predictor.spec.short_audio == "tile" else "zero-padded")
                              + " to the model's length and its frames are sampled closer together"),
                           err=True)
            for path in paths:
                try:
                    for result in classify_timeline(path, predictor, window=window, hop=hop, top_k=top_k,
                                                    timeout=timeout, options=options, workers=workers):
                        emit(result)
                except MediaError as exc:
                    emit({"file": str(path), "error": exc.reason})
        predictor.result()  # no input at all: the bundle is still checked
        if failed:
            raise typer.Exit(2)

