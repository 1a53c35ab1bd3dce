"""Decode cost per file: our probe, our decode_window + compute_features of one window, a bare PyAV loop
that decodes only the frames that window needs, and `ffmpeg -i FILE -f null -` (decodes everything).

    .venv/bin/python benchmarks/decode.py [--media ../shared/media] [--spec synth] [--runs 3] [--start 0]

Prints a markdown table of medians in milliseconds. Timings, not assertions.
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def bare_pyav(path: Path, spec, start: float) -> None:
    """The least work PyAV can do for one window: seek, decode until the last frame time and the window
    end, convert the needed frames to RGB, resample audio to mono. No stream choice, no rotation, no checks."""
    import av

    end = start + spec.window_seconds
    targets = [start + o for o in spec.frame_offsets()]
    with av.open(str(path)) as c:
        if c.streams.video:
            v = c.streams.video[0]
            if start > 0:
                c.seek(int(start / v.time_base), stream=v)
            pending = list(targets)
            for frame in c.decode(v):
                while pending and frame.time is not None and frame.time >= pending[0]:
                    frame.to_ndarray(format="rgb24")
                    pending.pop(0)
                if not pending:
                    break
        if c.streams.audio:
            a = c.streams.audio[0]
            c.seek(int(start / a.time_base), stream=a)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
            for frame in c.decode(a):
                resampler.resample(frame)
                if frame.time is not None and frame.time >= end:
                    break


def ffmpeg_null(path: Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-threads", "1", "-i", str(path), "-f", "null", "-"],
                   check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    parser.add_argument("--spec", default="synth")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--start", type=float, default=0.0)
    args = parser.parse_args()

    import torch

    from mmdeploy.features import compute_features
    from mmdeploy.media import decode_window, probe
    from mmdeploy.spec import preset

    torch.set_num_threads(1)
    spec = preset(args.spec)
    has_ffmpeg = shutil.which("ffmpeg") is not None
    files = sorted(p for p in args.media.iterdir() if p.suffix != ".md" and p.is_file())
    decode_window(files[0], spec)  # warm imports
    print(f"spec={args.spec} ({spec.window_seconds:g}-s window, {spec.frames} frames at "
          f"{spec.frame_height}x{spec.frame_width}), start={args.start:g}s, median of {args.runs}, "
          f"torch threads 1, {platform.machine()} {platform.python_version()}")
    if not has_ffmpeg:
        print("ffmpeg CLI not found: that column is skipped (apt-get install -y ffmpeg)")
    print()
    print("| file | dur s | probe ms | ours: decode+features ms | bare PyAV, needed frames ms | ffmpeg -f null (all) ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for path in files:
        info = probe(path)
        probe_ms = median_ms(lambda: probe(path), args.runs)
        ours_ms = median_ms(lambda: compute_features(decode_window(path, spec, args.start), spec), args.runs)
        bare_ms = median_ms(lambda: bare_pyav(path, spec, args.start), args.runs)
        full_ms = f"{median_ms(lambda: ffmpeg_null(path), args.runs):.0f}" if has_ffmpeg else "n/a"
        duration = "none" if info.duration is None else f"{info.duration:.1f}"
        print(f"| {path.name} | {duration} | {probe_ms:.1f} | {ours_ms:.0f} | {bare_ms:.0f} | {full_ms} |")


if __name__ == "__main__":
    main()
