"""Batch throughput and memory: `mmdeploy batch` with --engine local vs ray on the same folder, the per-file
decode and per-batch inference costs (the two stages a cluster scales), and the driver's RSS over a long
run of small files (flat = bounded). Prints markdown tables; never asserts on time.

    .venv/bin/python benchmarks/batch.py [--model RUN] [--backend auto] [--files 96] [--small-files 10000]

Without --model: a random-weight bundle with the paper's ResNet18 encoders at the synth spec, exported to
ONNX (speed only; benchmarks/classify.py makes it). Media: one 4-s 640x360 H.264 + AAC clip generated with
PyAV, copied into folders of 8 (warm-up), --files/3 and --files files (distinct paths, so distinct file
ids). Throughput runs in this process, engine by engine: the first run carries the start-up (Ray init or
the decode workers, model load); files/s once started is the big folder's files over its wall time. For
memory, one 1-s 64x64 clip is copied --small-files times and a fresh `mmdeploy batch` process's RSS is
sampled as it goes.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classify import random_bundle, write_clip  # noqa: E402  (the same clip and model as benchmarks/classify.py)

MM = [sys.executable, "-m", "mmdeploy"]
SUMMARY = re.compile(r"(\d+) done \((\d+) failed\).*wall ([\d.]+) s, "
                     r"first file after ([\d.]+) s, then ([\d.]+) files/s")


def rss_mb(pid: int) -> float:
    """Resident memory of one process (MB), 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run(args: list[str], sample_s: float = 0.5) -> tuple[dict, list[tuple[float, float, int]]]:
    """Run `mmdeploy batch ...`; its summary numbers and (seconds, driver RSS MB, parts written) samples."""
    out = Path(args[args.index("--out") + 1])
    proc = subprocess.Popen(MM + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float, int]] = []
    t0 = time.perf_counter()

    def watch() -> None:
        while proc.poll() is None:
            samples.append((time.perf_counter() - t0, rss_mb(proc.pid),
                            len(list(out.glob("part-*.parquet"))) if out.is_dir() else 0))
            time.sleep(sample_s)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate()
    watcher.join()
    m = SUMMARY.search(stdout)
    if proc.returncode != 0 or m is None:
        raise SystemExit(f"mmdeploy {' '.join(args)} failed ({proc.returncode}):\n{stdout}\n{stderr[-3000:]}")
    done, failed, wall, first, rate = m.groups()
    return {"done": int(done), "failed": int(failed), "wall": float(wall), "first": float(first),
            "rate": float(rate)}, samples


def stage_costs(results: Path, run_dir: Path, backend: str, batch: int = 32) -> dict[str, float]:
    """Median per-file decode+features ms (from the rows) and one inference call on `batch` windows (ms)."""
    import pyarrow.parquet as pq
    import torch

    from mmdeploy.runtime import load_predictor

    t = pq.read_table(results, columns=["timings_ms"]).to_pylist()
    per_file = statistics.median(r["timings_ms"]["decode"] + r["timings_ms"]["features"] for r in t if r["timings_ms"])
    torch.set_num_threads(1)
    predictor = load_predictor(run_dir, backend, threads=1)
    spec = predictor.spec
    audio = np.random.rand(batch, 1, *spec.spectrogram_shape).astype(np.float32)
    video = np.random.rand(batch, *spec.frames_shape).astype(np.float32)
    predictor.predict(audio, video)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        predictor.predict(audio, video)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"decode_ms": per_file, "infer_ms": statistics.median(times), "batch": batch, "backend": predictor.backend}


def copies(src: Path, folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copyfile(src, folder / f"{i:06d}{src.suffix}")
    return folder


def throughput(engine: str, folders: dict[str, Path], run_dir: Path, backend: str, tmp: Path) -> dict[str, float]:
    """In one process: a first run on the warm-up folder (start-up: Ray init or the decode workers, model
    load), then the small and the big folder. Files/s: the big run's files / its wall time (per-run costs,
    model load and Ray's actor start, included), and between the two runs (those costs cancel out)."""
    from mmdeploy.batch import Job, run_batch

    job = Job(model=run_dir, backend=backend)
    walls = {}
    for name, folder in folders.items():
        s = run_batch([str(folder)], tmp / f"results-{engine}-{name}", job, engine=engine, quiet=True)
        walls[name] = (s.wall_s, s.done, s.first_s)
    (small, n_small), (big, n_big) = walls["small"][:2], walls["big"][:2]
    return {"warm_wall": walls["warmup"][0], "warm_files": walls["warmup"][1], "first": walls["warmup"][2],
            "small": small, "big": big, "rate": n_big / big, "marginal": (n_big - n_small) / max(big - small, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="run folder (default: random ResNet18 bundle, ONNX-exported)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--files", type=int, default=96, help="files in the big throughput folder (small: a third)")
    ap.add_argument("--small-files", type=int, default=10000, help="files in the memory run (0: skip)")
    ap.add_argument("--engines", default="local,ray")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="mmdeploy-batch-bench-"))
    try:
        run_dir = args.model or random_bundle(tmp, "synth")
        clip = write_clip(tmp / "clip.mp4", 4.0, 25, (640, 360))
        folders = {"warmup": copies(clip, tmp / "warmup", 8), "small": copies(clip, tmp / "small", args.files // 3),
                   "big": copies(clip, tmp / "big", args.files)}
        common = ["--model", str(run_dir), "--backend", args.backend, "--quiet"]
        rows = {engine: throughput(engine, folders, run_dir, args.backend, tmp) for engine in args.engines.split(",")}
        costs = stage_costs(tmp / "results-local-big", run_dir, args.backend)
        print(f"\n### Throughput: 4-s 640x360 H.264 + AAC files, backend {costs['backend']}, {os.cpu_count()} cores\n")
        print(f"| engine | first run: 8 files (start-up) | {args.files // 3} files | {args.files} files | "
              f"files/s ({args.files} files / wall) | vs local | files/s between the two | vs local |")
        print("|---|---|---|---|---|---|---|---|")
        local = rows.get("local", {})
        for engine, r in rows.items():
            ratios = [f"{r[k] / local[k]:.2f}x" if local.get(k) else "-" for k in ("rate", "marginal")]
            print(f"| {engine} | {r['warm_wall']:.1f} s (first file after {r['first']:.1f} s) | {r['small']:.1f} s | "
                  f"{r['big']:.1f} s | {r['rate']:.2f} | {ratios[0]} | {r['marginal']:.2f} | {ratios[1]} |")
        print(f"\n### Stage costs (one core each)\n\n| stage | cost |\n|---|---|\n"
              f"| decode + features, per file (median of the local run's rows) | {costs['decode_ms']:.0f} ms |\n"
              f"| inference, per batch of {costs['batch']} windows ({costs['backend']}, 1 thread) | "
              f"{costs['infer_ms']:.0f} ms ({costs['infer_ms'] / costs['batch']:.1f} ms per file) |")
        if args.small_files:
            small = write_clip(tmp / "small.mp4", 1.0, 12, (64, 64))
            many = copies(small, tmp / "many", args.small_files)
            print(f"\n### Driver memory: {args.small_files} small files (1-s 64x64), --engine local\n")
            r, samples = run(["batch", str(many), "--out", str(tmp / "results-many"), "--part-rows", "512",
                              *common], sample_s=1.0)
            total_parts = max(s[2] for s in samples) or 1
            print("| progress (parts written) | driver RSS |\n|---|---|")
            marks = sorted({int(total_parts * f) for f in (0.1, 0.25, 0.5, 0.75, 1.0)})
            for mark in marks:
                hit = next((s for s in samples if s[2] >= max(mark, 1)), samples[-1])
                print(f"| {hit[2]}/{total_parts} parts ({hit[0]:.0f} s) | {hit[1]:.0f} MB |")
            print(f"\npeak driver RSS {max(s[1] for s in samples):.0f} MB; {r['done']} files, "
                  f"{r['rate']:.1f} files/s after the first")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
