"""`mmdeploy inspect FILE`: the tracks we would read and what the first window decodes to."""
from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add `inspect` to the app."""

    @app.command()
    def inspect(
        file: Path = typer.Argument(..., help="Any file FFmpeg reads (video or audio)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        spec: str = typer.Option("synth", "--spec", help="Spec preset for the first window."),
    ) -> None:
        """Show the audio/video tracks chosen in FILE and decode its first window."""
        report = inspect_file(file, spec)
        typer.echo(json.dumps(report) if as_json else _text(report))


def inspect_file(path: Path, preset_name: str = "synth") -> dict:
    """probe() + decode_window() of the first window, as the JSON the command prints."""
    from mmdeploy.media import decode_window, probe
    from mmdeploy.spec import preset

    spec = preset(preset_name)
    info = probe(path)
    clip = decode_window(path, spec)
    report = info.to_dict()
    report["file"] = report.pop("path")
    report["window"] = {
        "start": clip.start,
        "seconds": round(clip.seconds, 6),
        "audio_seconds": None if clip.audio is None else round(len(clip.audio) / spec.sample_rate, 6),
        "frames": None if clip.frames is None else int(clip.frames.shape[0]),
        "frame_size": None if clip.frames is None else [int(clip.frames.shape[2]), int(clip.frames.shape[1])],
        "frame_times": [round(float(t), 6) for t in clip.frame_times],
    }
    return {key: report[key] for key in ("file", "duration", "audio", "video", "window")}


def _text(r: dict) -> str:
    duration = "unknown" if r["duration"] is None else f"{r['duration']:.3f} s"
    lines = [r["file"], f"  duration  {duration}"]
    a, v, w = r["audio"], r["video"], r["window"]
    lines.append("  audio     none" if a is None else
                 f"  audio     stream {a['stream']}: {a['codec']}, {a['sample_rate']} Hz, {a['channels']} ch")
    lines.append("  video     none" if v is None else
                 f"  video     stream {v['stream']}: {v['codec']}, {v['width']}x{v['height']}, {v['fps']:g} fps"
                 + (f", rotation {v['rotation']}" if v["rotation"] else ""))
    window = f"  window    {w['start']:g}-{w['start'] + w['seconds']:g} s:"
    if w["audio_seconds"] is not None:
        window += f" audio {w['audio_seconds']:g} s"
    if w["frames"] is not None:
        width, height = w["frame_size"]
        times = ", ".join(f"{t:.3f}" for t in w["frame_times"])
        window += f" {w['frames']} frames {width}x{height} at [{times}] s"
    lines.append(window)
    return "\n".join(lines)
