"""Classify speed: one 3-s clip (decode / features / inference vs PyAV decode alone), a long file's timeline
against the decoding ceilings, and a folder with 1 worker vs all cores. Prints markdown tables.

    .venv/bin/python benchmarks/classify.py [--model RUN] [--backend auto] [--long-seconds 120]
        [--sizes 640x360,1280x720] [--rounds 3] [--sections clip,timeline,folder]

The timeline table measures, side by side in one run on the same file (median of --rounds, interleaved):
`ffmpeg -f null` (every stream), ffmpeg decoding only the video stream with -skip_frame noref (the ceiling:
what the chosen frames can depend on), bare PyAV full decode, our decode stage alone (`iter_windows`) and
the whole timeline (`classify_timeline`), each with the fast path and with `DecodeOptions(reference=True)`
(every packet decoded: the "before"). CPU s is user + system time of all threads (children for ffmpeg).

Without --model: a random-weight bundle with the paper's ResNet18 encoders at the synth spec (speed only).
Media is generated in a temp dir with PyAV (H.264 with B-frames + AAC). Needs `ffmpeg` on PATH for the
ffmpeg rows.

The README's "CLI speed and long timelines" tables (the default sections):

    .venv/bin/python benchmarks/classify.py --sections cold,segments [--long-seconds 600] [--rounds 2]

- cold: a cold `mmdeploy classify CLIP --model RUN --json` (CLIP: ../shared/media's 2.2-s CREMA-D clip; RUN:
  the synth-cpu architecture, random weights, exported to ONNX, `auto` = ONNX Runtime), whole process, median of
  --cold-repeats fresh processes, interleaved: this tree, and the tree at --before (git revision: the code before
  torch left the inference path), each with Python's bytecode cache (as after any first run of an installed
  package) and without (PYTHONDONTWRITEBYTECODE=1 and no cache: every import compiles, as this container runs);
  then `-X importtime`'s largest imports of the CLI process and of the decode workers' forkserver.
- segments: a --long-seconds 640x360 25-fps H.264 (B-frames) + stereo AAC file made by ffmpeg, `--window 2
  --hop 2`: `ffmpeg -f null` (2 threads, 1 thread), our timeline whole process (the CLI) and in-process
  (`classify_timeline`, model loaded, workers warm) with 1 and 2 decode workers, and the arithmetic for 16.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def write_clip(path: Path, seconds: float, fps: int, size: tuple[int, int], rate: int = 44100) -> Path:
    """H.264 with B-frames (moving textured gradient + noise; x264 veryfast, whose adaptive B-frames and
    b-pyramid code about half the frames as B) + stereo AAC tone: something a camera could have recorded."""
    import av

    w, h = size
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, w, dtype=np.float32)[None, :, None].repeat(h, 0).repeat(3, 2)
    base += rng.normal(0, 30, base.shape).astype(np.float32)  # texture that moves with the gradient
    from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame

    with av.open(str(path), "w", options=CONTAINER_OPTIONS) as out:  # the same bytes on every run
        vs = out.add_stream("libx264", rate=fps, options=encoder_options(
            "libx264", {"preset": "veryfast", "x264-params": "bframes=3:b-pyramid=normal"}))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        as_ = out.add_stream("aac", rate=rate, layout="stereo", options=encoder_options("aac"))
        frames, samples, chunk = int(seconds * fps), int(seconds * rate), 1024
        a = 0
        for i in range(frames):
            img = (np.roll(base, i * 3, axis=1) + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
            frame = video_frame(img)
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


def tree_cpu() -> float:
    """CPU s used so far by this process, its reaped children (ffmpeg) and its live descendants (the
    timeline's decode worker, which is reused and so never reaped)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    parents, ticks = {}, {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(proc.name)] = int(fields[1])
            ticks[int(proc.name)] = int(fields[11]) + int(fields[12])  # utime + stime
    mine = {os.getpid()}
    for _ in range(4):  # forkserver -> worker: a few levels deep
        mine |= {pid for pid, ppid in parents.items() if ppid in mine}
    return total + sum(ticks[pid] for pid in mine - {os.getpid()}) / tick


def cpu_wall(fn) -> tuple[float, float]:
    """(CPU s of this process tree, wall s) of fn()."""
    c0, t0 = tree_cpu(), time.perf_counter()
    fn()
    return tree_cpu() - c0, time.perf_counter() - t0


def timeline_vs_ceiling(long: Path, seconds: float, predictor, rounds: int, label: str) -> None:
    """One table: our timeline and decode stage (fast and reference) against ffmpeg and bare PyAV."""
    from mmdeploy.classify import classify_timeline
    from mmdeploy.media import DecodeOptions, iter_windows

    spec = predictor.spec
    ffmpeg = shutil.which("ffmpeg")
    quiet = {"check": True, "stdout": subprocess.DEVNULL}
    rows = []
    if ffmpeg:
        rows += [("`ffmpeg -i FILE -f null -` (all streams)",
                  lambda: subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-i", str(long), "-f", "null", "-"],
                                         **quiet)),
                 ("`ffmpeg -skip_frame noref -i FILE -map 0:v:0 -f null -` (video only, non-ref skipped)",
                  lambda: subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-skip_frame", "noref", "-i", str(long),
                                          "-map", "0:v:0", "-f", "null", "-"], **quiet))]
    stages: dict[str, list[dict]] = {}

    def timeline(tag: str, options=DecodeOptions()):
        def run() -> None:
            result = [r for r in classify_timeline(long, predictor, options=options) if "windows" in r][0]
            stages.setdefault(tag, []).append(result["timings_ms"])
        return run

    def windows(options):
        return lambda: sum(1 for _ in iter_windows(long, spec, options=options))

    reference, threads = DecodeOptions(reference=True), DecodeOptions(frame_threads=os.cpu_count() or 1)
    rows += [("bare PyAV full decode (first video + audio stream)", lambda: pyav_decode_all(long)),
             ("ours, decode stage (`iter_windows`), reference decode", windows(reference)),
             ("ours, decode stage (`iter_windows`), fast path", windows(DecodeOptions())),
             ("ours, timeline, reference decode (before)", timeline("before", reference)),
             (f"ours, timeline, fast path, MMDEPLOY_FRAME_THREADS={os.cpu_count()} (frame threads)",
              timeline("frame threads", threads)),
             ("**ours, timeline, fast path (default: 1 decode thread)**", timeline("default"))]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in rows}
    for _ in range(rounds):
        for name, fn in rows:
            results[name].append(cpu_wall(fn))
    print(f"| {label}: {seconds:.0f}-s file, {len(rows)} ways, median of {rounds} | wall s | CPU s | "
          "media s / wall s | throughput vs ffmpeg -f null |\n|---|---:|---:|---:|---:|")
    walls = {name: statistics.median(w for _, w in r) for name, r in results.items()}
    ref = walls[rows[0][0]] if ffmpeg else None
    for name, r in results.items():
        cpu = statistics.median(c for c, _ in r)
        ratio = f"{ref / walls[name]:.2f}x" if ref else "n/a (no ffmpeg)"
        print(f"| {name} | {walls[name]:.2f} | {cpu:.2f} | {seconds / walls[name]:.1f} | {ratio} |")
    print("\nprofile of the timelines (timings_ms summed over the windows, median of the rounds; decode and "
          "features run in the decode worker, infer in this process, overlapped with them):")
    for tag, runs in stages.items():
        print(f"- {tag}: " + ", ".join(f"{k} {statistics.median(t[k] for t in runs) / 1e3:.2f} s"
                                      for k in ("decode", "features", "infer")))
    print()


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


def synth_bundle(root: Path) -> Path:
    """The synth-cpu recipe's architecture and spec with random weights (benchmarks/runtime.py's random_bundle),
    exported to ONNX: `make demo`'s bundle, for speed (training changes no timing)."""
    from runtime import random_bundle  # benchmarks/runtime.py

    from mmdeploy.bundle import load_bundle
    from mmdeploy.export import export_onnx

    run = random_bundle(root, "synth-cpu")
    export_onnx(load_bundle(run))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="run folder (default: random ResNet18 bundle at --spec)")
    ap.add_argument("--spec", default="synth", help="preset for the random bundle")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--long-seconds", type=float, default=None, help="long file: 600 s (segments), 120 s (timeline)")
    ap.add_argument("--size", default="640x360", help="video size of the 3-s clips")
    ap.add_argument("--sizes", default="640x360,1280x720", help="video sizes of the long files (timeline)")
    ap.add_argument("--folder-clips", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the timeline / segments tables")
    ap.add_argument("--sections", default="cold,segments", help="cold,segments (the README's tables), clip, "
                    "timeline (the decoding-ceiling table), folder")
    ap.add_argument("--cold-repeats", type=int, default=7)
    ap.add_argument("--before", default="c128cc6", help="git revision for the cold-start 'before' row")
    ap.add_argument("--workers", default="1,2", help="segments: decode workers to measure")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if sections & {"cold", "segments"}:
        from speed import cold_section, segments_section  # benchmarks/speed.py

        tmp = Path(tempfile.mkdtemp(prefix="bench_speed_"))
        try:
            run = args.model or synth_bundle(tmp)
            if "cold" in sections:
                cold_section(run, tmp, args.cold_repeats, args.before)
            if "segments" in sections:
                segments_section(run, tmp, args.long_seconds, args.rounds,
                                 [int(w) for w in args.workers.split(",")])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if not sections - {"cold", "segments"}:
            return

    import torch

    from mmdeploy.classify import classify_file, classify_files
    from mmdeploy.pipeline import expand_paths, inference_threads
    from mmdeploy.runtime import load_predictor

    size = tuple(int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="bench_classify_"))
    try:
        run = args.model or random_bundle(tmp, args.spec)
        threads = inference_threads()  # as `mmdeploy classify` does
        torch.set_num_threads(threads)
        predictor = load_predictor(run, args.backend, threads=threads)
        clip = write_clip(tmp / "clip3s.mp4", 3.0, 25, size)
        folder = tmp / "folder"
        folder.mkdir()
        for i in range(args.folder_clips):
            shutil.copy(clip, folder / f"clip{i:03d}.mp4")
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()}-core CPU "
              f"(load average {os.getloadavg()[0]:.1f} at start), backend {predictor.backend} ({threads} inference "
              f"threads), spec window {predictor.spec.window_seconds}s, frames {predictor.spec.frames_shape}, "
              f"H.264 with B-frames at 25 fps\n")

        # 1. one 3-s clip
        classify_file(clip, predictor)  # warm-up
        if "clip" in sections:
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

        # 2. timeline of long files vs the decoding ceilings
        if "timeline" in sections:
            for dims in args.sizes.split(","):
                seconds = args.long_seconds or 120.0
                long = write_clip(tmp / f"long{dims}.mp4", seconds, 25, tuple(int(v) for v in dims.split("x")))
                timeline_vs_ceiling(long, seconds, predictor, args.rounds, dims)

        # 3. folder, 1 worker vs all cores (the first pool also starts the forkserver: torch + PyAV imports)
        if "folder" not in sections:
            return
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
