"""Latency (median, p95) and throughput of every usable runtime backend at batch 1/8/32, same inputs.

    .venv/bin/python benchmarks/runtime.py                 # runs/demo if trained, else synth-cpu arch, random
    .venv/bin/python benchmarks/runtime.py --run runs/demo --batches 1 8 32 --seconds 3

The bundle is never modified: when its ONNX is missing or stale, a copy is exported in a temp folder.
CPU goal: onnxruntime-cpu batch-1 latency <= 0.5x torch-cpu eager. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def default_bundle(tmp: Path) -> tuple[Path, str]:
    """runs/demo if it is a bundle, else the synth-cpu recipe's architecture with random weights."""
    import torch
    import yaml

    from mmdeploy.bundle import save_bundle
    from mmdeploy.models import build_model
    from mmdeploy.spec import preset

    demo = REPO / "runs" / "demo"
    if (demo / "model.json").is_file():
        return demo, f"trained bundle {demo}"
    recipe = yaml.safe_load((REPO / "training" / "recipes" / "synth-cpu.yaml").read_text())
    classes = [f"class{i}" for i in range(recipe["data"]["synth"]["classes"])]
    torch.manual_seed(0)
    model = build_model(recipe["model"], len(classes)).eval()
    run = save_bundle(tmp / "synth-cpu-random", model, classes, preset(recipe["data"]["spec"]))
    return run, "synth-cpu recipe architecture, random weights (no runs/demo)"


def exported(run: Path, tmp: Path) -> Path:
    """`run` if its ONNX is current, else an exported copy under `tmp`."""
    from mmdeploy.bundle import load_bundle
    from mmdeploy.export import export, onnx_is_current

    if onnx_is_current(load_bundle(run, with_model=False), run / "export" / "model.onnx"):
        return run
    if not str(run).startswith(str(tmp)):
        run = Path(shutil.copytree(run, tmp / "bundle", ignore=shutil.ignore_patterns("export")))
    export(run)
    return run


def measure(predictor, audio, video, seconds: float, min_iters: int = 5) -> list[float]:
    """Wall-clock ms per predict() call (features in, probabilities out), after 2 warm-up calls."""
    for _ in range(2):
        predictor.predict(audio, video)
    times, start = [], time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        predictor.predict(audio, video)
        times.append((time.perf_counter() - t) * 1000)
    return times


def p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="bundle folder (default: runs/demo, else a random synth-cpu model)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per backend and batch size")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and ONNX Runtime alike (default: cores)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    import torch

    from mmdeploy.export import example_inputs
    from mmdeploy.runtime import BACKENDS, backend_reasons, load_predictor
    from mmdeploy.runtime.ort_backend import cores

    threads = args.threads or cores()
    torch.set_num_threads(threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run, what = (args.run, f"bundle {args.run}") if args.run else default_bundle(tmp)
        run = exported(run, tmp)
        reasons = backend_reasons(run)
        usable = [b for b in BACKENDS if reasons[b] is None]
        print(f"# {what}; {platform.machine()}, {threads} threads for torch and ONNX Runtime, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, torch {torch.__version__}")
        for name in BACKENDS:
            if reasons[name]:
                print(f"# skipped {name}: {reasons[name]}")
        rows = []
        for name in usable:
            graphs = tuple(args.batches) if name.startswith("torch-cuda") else ()
            predictor = load_predictor(run, name, graph_batches=graphs, threads=threads)
            for b in args.batches:
                audio, video = example_inputs(predictor.spec, b)
                ms = measure(predictor, audio, video, args.seconds)
                med = statistics.median(ms)
                rows.append({"backend": predictor.backend, "batch": b, "median_ms": med, "p95_ms": p95(ms),
                             "clips_per_s": b * 1000 / med, "iters": len(ms)})
            del predictor
    print(f"\n{'backend':<22}{'batch':>6}{'median ms':>11}{'p95 ms':>9}{'clips/s':>10}{'iters':>7}")
    for r in rows:
        print(f"{r['backend']:<22}{r['batch']:>6}{r['median_ms']:>11.2f}{r['p95_ms']:>9.2f}"
              f"{r['clips_per_s']:>10.1f}{r['iters']:>7}")
    b1 = {r["backend"]: r["median_ms"] for r in rows if r["batch"] == 1}
    if "onnxruntime-cpu" in b1 and "torch-cpu" in b1:
        ratio = b1["onnxruntime-cpu"] / b1["torch-cpu"]
        print(f"\nonnxruntime-cpu / torch-cpu batch-1 latency: {ratio:.2f}x "
              f"(goal <= 0.5x: {'met' if ratio <= 0.5 else 'missed'})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
