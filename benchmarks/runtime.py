"""Latency and throughput of every usable runtime backend, CPU engines included, side by side in one run.

    .venv/bin/python benchmarks/runtime.py                          # paper + synth specs, batch 1/8/32
    .venv/bin/python benchmarks/runtime.py --specs paper --batches 1 8 --seconds 2
    .venv/bin/python benchmarks/runtime.py --run runs/demo          # one given bundle
    .venv/bin/python benchmarks/runtime.py --e2e                    # + classify folder, 600-s timeline, service
                                                                    #   (benchmarks/cpu_e2e.py), fp32 vs best

Specs: `paper` is the training/recipes/cremad-resnet18-mlb.yaml architecture (ResNet18 audio + video, 257x188
spectrogram, 3 frames at 224x224) with random weights; `synth` is a trained synth-cpu bundle when one exists
(runs/compare/runs/mlb-seed0, else runs/demo: calibration and the gate then use its own manifest), else the
synth-cpu architecture with random weights. Each bundle is copied into a temp folder, exported to ONNX and to
every CPU engine target (onnx-int8, openvino-int8, openvino-bf16, openvino-fp32) by `mmdeploy.export`, then
every backend that can run here is timed through its Predictor (features in, probabilities out), in rounds
of blocks so the machine's noise hits them alike (cpu_engines.time_engines). OpenVINO's own benchmark_app
runs each OpenVINO engine's file with the same threads (sync API, one stream, batch 1, static shape; its UI
wants `-hint none` for explicit threads/streams): the runtime's ceiling. Goals (paper spec, 2 cores): best
engine batch-1 latency >= 8x faster than ONNX Runtime fp32; ours >= 0.9x benchmark_app throughput. Prints
markdown tables and the load average; asserts nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CPU_TARGETS = ("onnx-int8", "openvino-int8", "openvino-bf16", "openvino-fp32")
TRAINED_SYNTH = (REPO / "runs" / "compare" / "runs" / "mlb-seed0", REPO / "runs" / "demo")


def random_bundle(root: Path, recipe: str, classes: int | None = None) -> Path:
    """A bundle with the recipe's architecture and spec and random weights."""
    import torch

    from mmdeploy.bundle import save_bundle
    from mmdeploy.config import read_yaml
    from mmdeploy.models import build_model
    from mmdeploy.spec import preset

    r = read_yaml(REPO / "training" / "recipes" / f"{recipe}.yaml", "recipe keys")
    n = classes or r["data"].get("synth", {}).get("classes", 6)
    torch.manual_seed(0)
    model = build_model(r["model"], n).eval()
    return save_bundle(root / f"{recipe}-random", model, [f"class{i}" for i in range(n)], preset(r["data"]["spec"]))


def spec_bundle(spec: str, tmp: Path) -> tuple[Path, str]:
    if spec == "paper":
        what = "paper spec (cremad-resnet18-mlb architecture), random weights"
        return random_bundle(tmp, "cremad-resnet18-mlb", 6), what
    for trained in TRAINED_SYNTH:
        if (trained / "model.json").is_file():
            out = tmp / "synth-trained"
            shutil.copytree(trained, out, ignore=shutil.ignore_patterns("export", "checkpoint", "plots"))
            return out, f"synth spec, trained bundle {trained.relative_to(REPO)}"
    return random_bundle(tmp, "synth-cpu"), "synth spec (synth-cpu architecture), random weights"


def export_all(run: Path, calibration: int | None, timing_seconds: float) -> dict[str, str]:
    """ONNX + every CPU target; {target: "ok" or the one-line reason it was not made}."""
    from mmdeploy.errors import MmdeployError
    from mmdeploy.export import export, load_target

    export(run)
    status = {}
    for name in CPU_TARGETS:
        try:
            export(run, target=load_target(name), onnx=False, calibration=calibration, timing_seconds=timing_seconds)
            status[name] = "ok"
        except MmdeployError as exc:
            status[name] = str(exc)
    return status


def benchmark_app(path: Path, precision: str, threads: int, spec, seconds: float) -> dict[str, float] | None:
    """OpenVINO's benchmark_app on `path` (batch 1, static shape, sync, explicit threads, one stream)."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(exe).exists():
        return None
    shape = (f"audio[1,1,{','.join(map(str, spec.spectrogram_shape))}],"
             f"video[1,{','.join(map(str, spec.frames_shape))}]")
    cmd = [exe, "-m", str(path), "-d", "CPU", "-hint", "none", "-api", "sync", "-nstreams", "1",
           "-nthreads", str(threads), "-t", str(max(1, int(seconds))), "-shape", shape,
           "-infer_precision", {"bf16": "bf16"}.get(precision, "f32")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600).stdout
    med = re.search(r"Median:\s+([\d.]+) (ms|us)", out)
    fps = re.search(r"Throughput:\s+([\d.]+) FPS", out)
    if not (med and fps):
        return None
    return {"median_ms": float(med.group(1)) / (1000 if med.group(2) == "us" else 1), "fps": float(fps.group(1))}


def bench_spec(spec_name: str, run: Path, what: str, args, threads: int) -> dict:
    from mmdeploy.cpu_engines import time_engines
    from mmdeploy.runtime import BACKENDS, backend_reasons, load_predictor
    from mmdeploy.runtime.cpu_record import ENGINES

    status = export_all(run, args.calibration, 0.5)
    reasons = backend_reasons(run)
    usable = [b for b in BACKENDS if reasons[b] is None]
    predictors = {n: load_predictor(run, n, threads=threads) for n in usable}
    spec = next(iter(predictors.values())).spec
    load0 = os.getloadavg()[0]
    rows: dict[str, dict[str, float]] = {n: {} for n in usable}
    for b in args.batches:
        ms = time_engines({n: p.predict for n, p in predictors.items()}, spec, [b], args.seconds,
                          block=3 if b == 1 else 1)
        for n in usable:
            rows[n][str(b)] = ms[n][str(b)]
    load1 = os.getloadavg()[0]
    meta = json.loads((run / "model.json").read_text())
    apps = {}
    if not args.no_benchmark_app:
        for name in ("openvino-int8", "openvino-bf16", "openvino-cpu"):
            if name in predictors:
                source = run / meta["export"]["engines"][name]["source"]
                res = benchmark_app(source, ENGINES[name].precision, threads, spec, args.app_seconds)
                if res:  # ours, timed right after, on the same file and threads
                    ours = time_engines({name: predictors[name].predict}, spec, [1], args.app_seconds)[name]["1"]
                    apps[name] = {**res, "ours_ms": ours}
    parity = json.loads((run / "export" / "parity.json").read_text())
    return {"spec": spec_name, "what": what, "rows": rows, "apps": apps, "status": status,
            "skipped": {b: r for b, r in reasons.items() if r}, "load": (load0, load1), "threads": threads,
            "gate": {n: {k: parity[n].get(k) for k in ("top1_agreement", "accuracy_delta_points", "max_abs_diff",
                                                       "quantizer", "fp32_layers", "inputs")}
                     for n in ENGINES if n in parity}}


def print_spec(res: dict, batches: list[int]) -> None:
    rows, ref = res["rows"], res["rows"].get("onnxruntime-cpu", {})
    print(f"\n### {res['what']}\n")
    print(f"{res['threads']} threads, load average {res['load'][0]:.1f} -> {res['load'][1]:.1f} on "
          f"{os.cpu_count()} CPUs\n")
    head = "| backend | " + " | ".join(f"batch {b} ms" for b in batches) + " | " + \
        " | ".join(f"b{b} vs ORT fp32" for b in batches) + " |"
    print(head)
    print("|---|" + "---:|" * (2 * len(batches)))
    for name, ms in sorted(rows.items(), key=lambda kv: kv[1].get("1", 1e9)):
        cells = [f"{ms[str(b)]:.1f}" for b in batches]
        ratios = [f"{ref[str(b)] / ms[str(b)]:.2f}x" if str(b) in ref else "-" for b in batches]
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    if res["apps"]:
        print("\n| OpenVINO engine | benchmark_app median ms | benchmark_app FPS | ours ms (batch 1) "
              "| ours / benchmark_app throughput |\n|---|---:|---:|---:|---:|")
        for name, a in res["apps"].items():
            print(f"| {name} | {a['median_ms']:.1f} | {a['fps']:.1f} | {a['ours_ms']:.1f} | "
                  f"{1000 / a['ours_ms'] / a['fps']:.2f}x |")
    print("\n| engine | quantizer | fp32 layers | top-1 agreement | accuracy delta (points) | max-abs | gate inputs |")
    print("|---|---|---|---:|---:|---:|---|")
    for name, g in res["gate"].items():
        inputs = g["inputs"] or {}
        src = f"{inputs.get('split')} split, {inputs.get('count')} windows" if "split" in inputs else \
            f"random ({inputs.get('count')})"
        delta = "-" if g["accuracy_delta_points"] is None else f"{g['accuracy_delta_points']:+.2f}"
        print(f"| {name} | {g.get('quantizer') or '-'} | {g.get('fp32_layers') or '-'} | "
              f"{100 * g['top1_agreement']:.1f} % | {delta} | {g['max_abs_diff']:.3g} | {src} |")
    for name, why in res["status"].items():
        if why != "ok":
            print(f"\nnot made: {name}: {why}")
    for name, why in res["skipped"].items():
        print(f"# skipped {name}: {why}")


def goals(results: list[dict]) -> None:
    paper = next((r for r in results if r["spec"] == "paper"), None)
    if paper is None or "onnxruntime-cpu" not in paper["rows"]:
        return
    ref = paper["rows"]["onnxruntime-cpu"]["1"]
    best = min((n for n in paper["rows"] if n not in ("onnxruntime-cpu", "torch-cpu")),
               key=lambda n: paper["rows"][n]["1"], default=None)
    if best:
        ratio = ref / paper["rows"][best]["1"]
        print(f"\ngoal: paper batch-1 latency of the best CPU engine ({best}) vs ONNX Runtime fp32: {ratio:.2f}x "
              f"(goal >= 8x: {'met' if ratio >= 8 else 'missed'})")
    for name, a in paper["apps"].items():
        r = 1000 / a["ours_ms"] / a["fps"]
        print(f"goal: {name} ours vs benchmark_app throughput: {r:.2f}x "
              f"(goal >= 0.9x: {'met' if r >= 0.9 else 'missed'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="one bundle folder instead of the specs (copied, never modified)")
    parser.add_argument("--specs", nargs="+", default=["paper", "synth"], choices=["paper", "synth"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per backend and batch size")
    parser.add_argument("--app-seconds", type=float, default=10.0, help="benchmark_app time per engine")
    parser.add_argument("--no-benchmark-app", action="store_true")
    parser.add_argument("--calibration", type=int, help="int8 calibration windows (default: the targets' 300)")
    parser.add_argument("--threads", type=int, help="CPU threads for every runtime (default: cores)")
    parser.add_argument("--e2e", action="store_true", help="also run benchmarks/cpu_e2e.py on the paper bundle")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    from mmdeploy.environment import cpu_info
    from mmdeploy.settings import cpu_count

    threads = args.threads or cpu_count()
    torch.set_num_threads(threads)
    cpu = cpu_info()
    print(f"# {datetime.date.today()}, {cpu['model']} ({', '.join(cpu['features'])}), {platform.machine()}, "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}; command: python benchmarks/runtime.py "
          + " ".join(sys.argv[1:]))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        tmp = Path(tmp)
        todo = [("run", None)] if args.run else [(s, None) for s in args.specs]
        for spec, _ in todo:
            if args.run:
                run = Path(shutil.copytree(args.run, tmp / "bundle", ignore=shutil.ignore_patterns("export")))
                what = f"bundle {args.run}"
            else:
                run, what = spec_bundle(spec, tmp)
            res = bench_spec(spec, run, what, args, threads)
            print_spec(res, args.batches)
            results.append(res)
            if args.e2e and spec == "paper":
                import cpu_e2e  # benchmarks/cpu_e2e.py

                res["e2e"] = cpu_e2e.run_all(run, tmp / "e2e")
        goals(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
