"""Classify speed: one 3-s clip (decode / features / inference vs PyAV decode alone), a long file's timeline
(vs `ffmpeg -i FILE -f null -`), and a folder with 1 worker vs all cores. Prints markdown tables.

    .venv/bin/python benchmarks/classify.py [--model RUN] [--backend auto] [--long-seconds 180]

Without --model: a random-weight bundle with the paper's ResNet18 encoders at the synth spec (speed only).
Media is generated in a temp dir with PyAV (H.264 + AAC). Needs `ffmpeg` on PATH for the reference row.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_clip(path: Path, seconds: float, fps: int, size: tuple[int, int], rate: int = 44100) -> Path:
    """H.264 (moving gradient + noise) + stereo AAC tone: something a phone could have recorded."""
    import av

    w, h = size
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        as_ = out.add_stream("aac", rate=rate, layout="stereo")
        frames, samples, chunk = int(seconds * fps), int(seconds * rate), 1024
        a = 0
        for i in range(frames):
            img = (np.roll(base, i * 3, axis=1) + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
            while a < min(samples, (i + 1) * rate // fps):
                t = np.arange(a, a + chunk) / rate
                tone = (0.2 * np.sin(2 * np.pi * (220 + 40 * (a // rate)) * t)).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]).reshape(1, -1), format="flt", layout="stereo")
                af.sample_rate, af.pts, af.time_base = rate, a, Fraction(1, rate)
                out.mux(as_.encode(af))
                a += chunk
        out.mux(vs.encode(None))
        out.mux(as_.encode(None))
    return path


def pyav_decode_all(path: Path) -> None:
    """Reference: decode every packet of the first video and first audio stream, nothing else."""
    import av

    with av.open(str(path)) as c:
        for _ in c.decode(*[s for s in (c.streams.video[:1] + c.streams.audio[:1])]):
            pass


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_bundle(root: Path, spec_name: str) -> Path:
    """Random ResNet18 x2 bundle, exported to ONNX (so `auto` picks ONNX Runtime, as after `make demo`)."""
    from mmdeploy.bundle import load_bundle, save_bundle
    from mmdeploy.export import export_onnx
    from mmdeploy.models import build_model, default_arch
    from mmdeploy.spec import preset

    classes = [f"class{i}" for i in range(6)]
    run = save_bundle(root / "run", build_model(default_arch(), len(classes)).eval(), classes, preset(spec_name))
    export_onnx(load_bundle(run))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="run folder (default: random ResNet18 bundle at --spec)")
    ap.add_argument("--spec", default="synth", help="preset for the random bundle")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--long-seconds", type=float, default=180.0)
    ap.add_argument("--size", default="640x360", help="video size of the generated files")
    ap.add_argument("--folder-clips", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from mmdeploy.classify import classify_file, classify_files, classify_timeline, expand_paths, inference_threads
    from mmdeploy.runtime import load_predictor

    size = tuple(int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_classify_"))
    try:
        run = args.model or random_bundle(tmp, args.spec)
        threads = inference_threads()  # as `mmdeploy classify` does
        torch.set_num_threads(threads)
        predictor = load_predictor(run, args.backend, threads=threads)
        clip = write_clip(tmp / "clip3s.mp4", 3.0, 25, size)
        long = write_clip(tmp / "long.mp4", args.long_seconds, 25, size)
        folder = tmp / "folder"
        folder.mkdir()
        for i in range(args.folder_clips):
            shutil.copy(clip, folder / f"clip{i:03d}.mp4")
        print(f"machine: {os.cpu_count()}-core CPU (load average {os.getloadavg()[0]:.1f} at start), backend "
              f"{predictor.backend} ({threads} inference threads), spec window {predictor.spec.window_seconds}s, frames "
              f"{predictor.spec.frames_shape}, video {args.size} 25 fps\n")

        # 1. one 3-s clip
        classify_file(clip, predictor)  # warm-up
        parts = [classify_file(clip, predictor)["timings_ms"] for _ in range(args.repeats)]
        med = {k: statistics.median(p[k] for p in parts) for k in ("decode", "features", "infer")}
        total = best_of(lambda: classify_file(clip, predictor), args.repeats) * 1e3
        decode_alone = best_of(lambda: pyav_decode_all(clip), args.repeats) * 1e3
        print("| 3-s clip (median of %d) | ms |\n|---|---:|" % args.repeats)
        for k, v in med.items():
            print(f"| {k} | {v:.1f} |")
        print(f"| **classify_file total** | **{total:.1f}** |")
        print(f"| PyAV decode alone (all frames + audio) | {decode_alone:.1f} |")
        print(f"| total / decode alone | {total / decode_alone:.2f}x (goal <= 1.5x) |\n")

        # 2. timeline of a long file vs ffmpeg -f null
        t0 = time.perf_counter()
        windows = sum(1 for r in classify_timeline(long, predictor) if "windows" not in r)
        ours = time.perf_counter() - t0
        print(f"| timeline, {args.long_seconds:.0f}-s file | wall s | media s / wall s |\n|---|---:|---:|")
        print(f"| classify --window {predictor.spec.window_seconds:g} ({windows} windows) | {ours:.2f} | "
              f"{args.long_seconds / ours:.1f} |")
        if shutil.which("ffmpeg"):
            t0 = time.perf_counter()
            subprocess.run(["ffmpeg", "-v", "error", "-i", str(long), "-f", "null", "-"], check=True)
            ref = time.perf_counter() - t0
            print(f"| ffmpeg -i FILE -f null - | {ref:.2f} | {args.long_seconds / ref:.1f} |")
            print(f"| throughput vs ffmpeg | | {ref / ours:.2f}x (goal >= 0.8x) |\n")
        else:
            print("| ffmpeg -f null | not installed (apt-get install -y ffmpeg) | |\n")

        # 3. folder, 1 worker vs all cores (the first pool also starts the forkserver: torch + PyAV imports)
        paths, _ = expand_paths([str(folder)])
        cores = os.cpu_count() or 1
        print(f"| folder of {len(paths)} 3-s clips | wall s | files/s |\n|---|---:|---:|")
        for workers, note in ((1, "in this process"), (cores, "cold: starts the forkserver"), (cores, "warm")):
            t0 = time.perf_counter()
            n = sum(1 for r in classify_files(paths, predictor, workers=workers) if "error" not in r)
            wall = time.perf_counter() - t0
            print(f"| workers={workers}, {note} ({n} ok) | {wall:.2f} | {n / wall:.1f} |")
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
