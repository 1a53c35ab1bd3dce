"""Decode cost per file: our probe, our decode_window + compute_features of one window, a bare PyAV loop
that decodes only the frames that window needs, and `ffmpeg -i FILE -f null -` (decodes everything).

    .venv/bin/python benchmarks/decode.py [--media ../shared/media] [--spec synth] [--runs 3] [--start 0]
        [--sections files,cache] [--cache-rounds 2] [--cache-workers 1]

Prints a markdown table of medians in milliseconds. Timings, not assertions.

The cache section measures training's feature-cache warm-up (`warm_cache`, what `mmdeploy data cache`
runs) in files/s with the fast decode path and with `DecodeOptions(reference=True)` (every packet decoded:
the "before"), alternating, each round into a fresh cache folder, on three sets: a generated synthetic
dataset (`mmdeploy data synth`), 6-s 640x360 H.264 clips with B-frames (two windows each) and the
shared clips.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def cache_sets(root: Path, media: Path) -> dict[str, list]:
    """{name: manifest items} of the three warm-up sets (see the module docstring)."""
    from mmdeploy.data.manifest import Item, read_manifest
    from mmdeploy.data.synth import generate

    sys.path.insert(0, str(Path(__file__).parent))
    from classify import write_clip

    synth = read_manifest(generate(root / "synth", clips=48, workers=1)).items
    clip = write_clip(root / "camera.mp4", 6.0, 25, (640, 360))
    camera = []
    for i in range(12):
        path = shutil.copy(clip, root / f"camera{i:02d}.mp4")
        camera += [Item(str(path), "a", "train", 0.0, 3.0), Item(str(path), "a", "train", 3.0, 6.0)]
    shared = [Item(str(p), "a", "train") for p in sorted(media.iterdir()) if p.is_file() and p.suffix != ".md"]
    return {"synth (64x64, 12 fps, 2 s)": synth, "camera-like (640x360 H.264 B-frames, 3-s windows)": camera,
            "shared clips (first window)": shared}


def cache_warmup(media: Path, spec, rounds: int, workers: int) -> None:
    from mmdeploy.data.cache import warm_cache
    from mmdeploy.media import DecodeOptions

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        root = Path(tmp)
        sets = cache_sets(root, media)
        print(f"| warm-up set ({workers} worker{'s' if workers > 1 else ''}, median of {rounds}) | items | "
              "files/s, reference decode | files/s, fast path | fast / reference |\n|---|---:|---:|---:|---:|")
        for k, (name, items) in enumerate(sets.items()):
            rates: dict[bool, list[float]] = {True: [], False: []}
            for r in range(rounds):
                for reference in ((True, False) if r % 2 == 0 else (False, True)):
                    t0 = time.perf_counter()
                    failures = warm_cache(items, spec, root / f"cache{k}-{r}-{int(reference)}", workers=workers,
                                          options=DecodeOptions(reference=reference))
                    rates[reference].append((len(items) - len(failures)) / (time.perf_counter() - t0))
            ref, fast = statistics.median(rates[True]), statistics.median(rates[False])
            print(f"| {name} | {len(items)} | {ref:.1f} | {fast:.1f} | {fast / ref:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    parser.add_argument("--spec", default="synth")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--sections", default="files,cache")
    parser.add_argument("--cache-rounds", type=int, default=2)
    parser.add_argument("--cache-workers", type=int, default=1, help="warm_cache workers (1: in this process)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))

    import torch

    from mmdeploy.features import compute_features
    from mmdeploy.media import DecodeOptions, decode_window, probe
    from mmdeploy.spec import preset

    torch.set_num_threads(1)
    spec = preset(args.spec)
    has_ffmpeg = shutil.which("ffmpeg") is not None
    files = sorted(p for p in args.media.iterdir() if p.suffix != ".md" and p.is_file())
    decode_window(files[0], spec)  # warm imports
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()}-core CPU, load average "
          f"{os.getloadavg()[0]:.1f}")
    if "cache" in sections:
        cache_warmup(args.media, spec, args.cache_rounds, args.cache_workers)
        print()
    if "files" not in sections:
        return
    print(f"spec={args.spec} ({spec.window_seconds:g}-s window, {spec.frames} frames at "
          f"{spec.frame_height}x{spec.frame_width}), start={args.start:g}s, median of {args.runs}, "
          f"torch threads 1, {platform.machine()} {platform.python_version()}")
    if not has_ffmpeg:
        print("ffmpeg CLI not found: that column is skipped (apt-get install -y ffmpeg)")
    print()
    print("| file | dur s | probe ms | ours: decode+features ms | same, reference decode ms | "
          "bare PyAV, needed frames ms | ffmpeg -f null (all) ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path in files:
        info = probe(path)
        probe_ms = median_ms(lambda: probe(path), args.runs)
        ours_ms = median_ms(lambda: compute_features(decode_window(path, spec, args.start), spec), args.runs)
        reference = DecodeOptions(reference=True)
        before_ms = median_ms(lambda: compute_features(decode_window(path, spec, args.start, options=reference), spec),
                              args.runs)
        bare_ms = median_ms(lambda: bare_pyav(path, spec, args.start), args.runs)
        full_ms = f"{median_ms(lambda: ffmpeg_null(path), args.runs):.0f}" if has_ffmpeg else "n/a"
        duration = "none" if info.duration is None else f"{info.duration:.1f}"
        print(f"| {path.name} | {duration} | {probe_ms:.1f} | {ours_ms:.0f} | {before_ms:.0f} | {bare_ms:.0f} "
              f"| {full_ms} |")


if __name__ == "__main__":
    main()
