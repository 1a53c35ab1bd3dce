"""`mmdeploy watch SOURCE` (also `mmdeploy classify SOURCE --live`): classify a live stream window by window."""
from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer

from mmdeploy.commands.options import backend_option

SOURCE_HELP = ("A URL FFmpeg opens (udp://, rtp://, rtsp://, http(s):// progressive or HLS .m3u8; srt:// where PyAV's "
               "FFmpeg has it), `-` for "
               "a stream on stdin, or a capture device with --format (alsa, x11grab, lavfi, ...).")


def register(app: typer.Typer) -> None:
    """Add `watch` to the app."""

    @app.command()
    def watch(
        source: str = typer.Argument(..., help=SOURCE_HELP),
        model: Optional[Path] = typer.Option(None, "--model", help="Run folder (bundle); default: newest under runs/."),
        backend: str = backend_option(),
        as_json: bool = typer.Option(False, "--json", help="NDJSON on stdout: a line per window, event lines, "
                                                          "and the summary line at the end."),
        top_k: int = typer.Option(5, "--top-k", min=1, help="How many classes to list."),
        window: Optional[float] = typer.Option(None, "--window", min=0.1, help="Window length, seconds "
                                                                               "(default: the model's)."),
        hop: Optional[float] = typer.Option(None, "--hop", min=0.1, help="Step between windows, seconds "
                                                                         "(default: the window)."),
        format: Optional[str] = typer.Option(None, "--format", help="FFmpeg input format: a capture device "
                                             "(alsa, v4l2, x11grab, lavfi) or the stream's format on stdin "
                                             "(mpegts, matroska, ...)."),
        option: list[str] = typer.Option([], "--option", help="FFmpeg option KEY=VALUE for opening the "
                                         "source (repeatable), e.g. rtsp_transport=tcp."),
        open_timeout: float = typer.Option(10.0, "--open-timeout", min=0.5, help="Seconds the source may take "
                                                                                 "to open."),
        read_timeout: float = typer.Option(5.0, "--read-timeout", min=0.5, help="Seconds without data before "
                                                                                "the source counts as stalled."),
        reconnects: int = typer.Option(5, "--reconnects", min=0, help="Reopen a lost source this many times "
                                       "in a row (backoff 1, 2, 4, ... s); a connection that gave windows "
                                       "resets the count."),
        duration: Optional[float] = typer.Option(None, "--duration", min=0.1, help="Stop after this many "
                                                 "seconds of stream."),
        max_wait: Optional[float] = typer.Option(None, "--max-wait", min=0.0, help="Seconds a window may wait "
                                                 "for the model before it is dropped (default: the hop)."),
        on: list[str] = typer.Option([], "--on", help="LABEL:THRESHOLD: a detection line when the label's "
                                     "probability reaches it (repeatable)."),
        exec_cmd: Optional[str] = typer.Option(None, "--exec", help="Command run on each detection (the window "
                                               "line as JSON on its stdin, LIVE_LABEL/SCORE/START/END set)."),
        webhook: Optional[str] = typer.Option(None, "--webhook", help="URL that gets each detection's window "
                                              "line as a JSON POST."),
    ) -> None:
        """Classify a live stream as it happens: a line per window as soon as it is classified, with its
        stream time and latency; windows the model cannot keep up with are dropped and counted; a lost
        source is reopened with backoff; Ctrl-C ends with a summary (windows, dropped, latency p50/p99,
        reconnects)."""
        run_watch(source, model, backend, as_json, top_k, window, hop, format=format, option=option,
                  open_timeout=open_timeout, read_timeout=read_timeout, reconnects=reconnects, duration=duration,
                  max_wait=max_wait, on=on, exec_cmd=exec_cmd, webhook=webhook)


def parse_options(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    from mmdeploy.errors import ConfigError

    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option rtsp_transport=tcp")
        out.append((key, value))
    return tuple(out)


def format_line(line: dict) -> str:
    """A window line -> one readable line."""
    opinions = "  ".join(f"{m} {v['label']} {v['score']:.2f}" for m, v in line["per_modality"].items())
    return (f"{line['start']:8.2f}-{line['end']:.2f}s  {line['label']} {line['score']:.3f}  "
            f"[{'+'.join(line['modalities'])}]  {opinions}  latency {line['latency_ms']:.0f} ms")


def format_summary(s: dict) -> str:
    lat = s["latency_ms"]
    p = (f"latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms" if lat["p50"] is not None
         else "no latency (no window)")
    return (f"summary: {s['windows']} windows, {s['dropped']} dropped, {p}, {s['reconnects']} reconnects, "
            f"{s['stream_s']:.1f} s of stream in {s['seconds']:.1f} s ({s['ended']})")


def run_watch(source: str, model: Optional[Path], backend: str, as_json: bool, top_k: int, window: Optional[float],
              hop: Optional[float], format: Optional[str] = None, option: list[str] = (),
              open_timeout: float = 10.0, read_timeout: float = 5.0, reconnects: int = 5,
              duration: Optional[float] = None, max_wait: Optional[float] = None, on: list[str] = (),
              exec_cmd: Optional[str] = None, webhook: Optional[str] = None) -> None:
    from mmdeploy.settings import Settings

    settings = Settings.from_env()  # the edge: read once, passed down
    from mmdeploy.isolate import prestart, shutdown

    prestart()  # the decode worker's imports overlap with loading the model
    from mmdeploy.bundle import latest_bundle
    from mmdeploy.detections import Detector, parse_rule
    from mmdeploy.errors import ConfigError
    from mmdeploy.live import LiveSession, PipeFeed
    from mmdeploy.media.live import LiveSource
    from mmdeploy.pipeline import decode_options, load_model

    if (exec_cmd or webhook) and not on:
        raise ConfigError("--exec/--webhook: say when with --on LABEL:THRESHOLD")
    options = parse_options(list(option))
    predictor = load_model(model if model is not None else latest_bundle("runs"), backend)  # torch only if used
    rules = [parse_rule(r, list(predictor.classes)) for r in on]
    lock = threading.Lock()

    def emit(line: dict) -> None:
        with lock:
            if as_json:
                typer.echo(json.dumps(line))
            if "event" in line:
                kind = "error" if line.get("failed") else \
                    "warning" if line["event"] in ("dropped", "lost") else "note"
                typer.echo(f"{kind}: {line['message']}", err=True)
            elif "summary" in line:
                typer.echo(format_summary(line["summary"]), err=True)
            elif not as_json:
                typer.echo(format_line(line))

    detector = Detector(rules, exec_cmd, webhook, say=emit)
    feed = None
    if source == "-":
        feed = PipeFeed("-", format)
        threading.Thread(target=_copy_stdin, args=(feed,), daemon=True, name="mmdeploy-stdin").start()
        live = feed.source(options)
    else:
        live = LiveSource(source, source, format, options)
    session = LiveSession(live, predictor, window, hop, top_k=top_k, open_s=open_timeout, read_s=read_timeout,
                          reconnects=0 if feed else reconnects, options=decode_options(settings),
                          max_wait_s=max_wait, duration_s=duration)
    # SIGINT too, explicitly: a job a non-interactive shell starts with `&` inherits SIGINT ignored, and
    # `kill -INT` must still end it with its summary (as ffmpeg does)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    failed = False
    lines = session.run()
    try:
        for line in lines:
            emit(line)
            if "probs" in line:
                for detection in detector.check(line):
                    emit(detection)
            failed = failed or bool(line.get("failed"))
    except KeyboardInterrupt:
        session.ended = "interrupted"
    finally:
        session.stop()
        lines.close()
        session.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if feed is not None:
            feed.close(drain_s=0)
        shutdown()  # no worker starting or idle when the process exits
    emit(session.summary())
    if failed:
        raise typer.Exit(2)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _copy_stdin(feed) -> None:
    """stdin -> the FIFO the decode worker reads; the end of stdin is the end of the stream."""
    import time

    stream = sys.stdin.buffer
    try:
        while True:
            chunk = stream.read1(1 << 16)
            if not chunk:
                break
            while not feed.write(chunk):
                if feed.closing:
                    return
                time.sleep(0.02)
    finally:
        feed.close()
