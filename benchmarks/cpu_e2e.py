"""End to end, ONNX Runtime fp32 against the CPU engine `auto` picks from the export's timing record, side by
side in one run: files/s of `mmdeploy classify` on a folder of CREMA-D-size clips, a 600-s timeline, and the
service at concurrency 32.

    .venv/bin/python benchmarks/cpu_e2e.py --model RUN [--clips 48] [--timeline-seconds 600] [--requests 96]
    .venv/bin/python benchmarks/runtime.py --specs paper --e2e      # the same, on the paper-spec bundle

RUN must have been exported to the CPU targets (benchmarks/runtime.py does it). fp32 is `--backend
onnxruntime` (onnxruntime-cpu), the engine is `--backend auto` (it says which in each result's `backend`).
The folder is copies of ../shared/media/cremad_1001_DFA_ANG_XX.flv (a CREMA-D clip) in a temp dir; files/s is
steady state (from the first result line to the last, so start-up and model load are left out); the timeline
is that clip joined to itself to about 600 s (ffmpeg's concat demuxer, stream copy), classified in 3-s windows; the service
numbers come from benchmarks/serve_load.py's own load loop (batching on, concurrency 32). Asserts nothing.
Goal (issue #18): classify folder files/s >= 2.5x fp32.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "media" / "cremad_1001_DFA_ANG_XX.flv"
BACKENDS = {"fp32": "onnxruntime", "engine": "auto"}


def folder(root: Path, n: int) -> Path:
    out = root / "clips"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copy(CLIP, out / f"clip{i:03d}{CLIP.suffix}")
    return out


def long_file(root: Path, seconds: float) -> Path:
    """The CREMA-D clip joined to itself to about `seconds` (ffmpeg's concat demuxer, stream copy: no re-encode;
    `-stream_loop` cannot loop this FLV: it has no index to seek back with, and ffmpeg then writes one copy and
    exits 0). Checked: a file shorter than asked stops the benchmark."""
    import av

    with av.open(str(CLIP)) as c:
        length = float(c.duration or 0) / 1e6 or 2.5
    listing = root / "long.txt"
    listing.write_text(f"file '{CLIP}'\n" * max(1, int(round(seconds / length))))
    out = root / f"long{CLIP.suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy",
                    str(out)], check=True, timeout=600)
    with av.open(str(out)) as c:
        got = float(c.duration or 0) / 1e6
    if got < 0.9 * seconds:
        raise SystemExit(f"{out}: {got:.1f} s long, asked for {seconds:g} s")
    return out


def stream_cli(args: list[str]) -> tuple[list[tuple[float, dict]], float, str]:
    """Run `mmdeploy classify ... --json`; ([(arrival time, result)], total wall s, first backend)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mmdeploy", "classify", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines = []
    for line in proc.stdout:
        if line.strip():
            lines.append((time.perf_counter(), json.loads(line)))
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise SystemExit(f"classify failed: {err.strip()[-400:]}")
    backend = next((r.get("backend") for _, r in lines if "backend" in r), "?")
    return lines, time.perf_counter() - start, backend


def steady_rate(lines: list[tuple[float, dict]]) -> float:
    """Results per second from the first result to the last."""
    if len(lines) < 2:
        return float("nan")
    return (len(lines) - 1) / (lines[-1][0] - lines[0][0])


def run_all(model: Path, root: Path, clips: int = 48, timeline_seconds: float = 600.0, requests: int = 96,
            concurrency: int = 32) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    out: dict = {"folder": {}, "timeline": {}, "service": {}}
    clips_dir = folder(root, clips)
    longf = long_file(root, timeline_seconds) if shutil.which("ffmpeg") else None
    load0 = os.getloadavg()[0]
    for tag, backend in BACKENDS.items():
        lines, wall, used = stream_cli([str(clips_dir), "--model", str(model), "--backend", backend])
        out["folder"][tag] = {"backend": used, "files_per_s": steady_rate(lines), "wall_s": wall, "files": len(lines)}
        if longf is not None:
            lines, wall, used = stream_cli([str(longf), "--model", str(model), "--backend", backend, "--window", "3",
                                            "--hop", "3"])
            out["timeline"][tag] = {"backend": used, "windows": len(lines), "wall_s": wall,
                                    "windows_per_s": steady_rate(lines), "realtime_x": timeline_seconds / wall}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import serve_load

    data = CLIP.read_bytes()
    for tag, backend in BACKENDS.items():
        with serve_load.service(model, backend, True, 1, root / f"serve-{tag}.log", {}) as (url, _):
            serve_load.load(url, data, CLIP.name, 4, 16, 120)  # warm
            r = serve_load.load(url, data, CLIP.name, concurrency, requests, 300)
            one = __import__("httpx").post(url + "/classify", files={"video": (CLIP.name, data)}, timeout=120)
            used = one.json().get("backend", "?") if one.status_code == 200 else f"? ({one.status_code})"
            out["service"][tag] = {"backend": used, "rps": r["rps"], "p50_ms": r["p50"], "p99_ms": r["p99"],
                                   "infer_ms": r["stages"].get("infer"), "errors": sum(r["errors"].values())}
    out["load"] = (load0, os.getloadavg()[0])
    print_tables(out, clips, timeline_seconds, concurrency)
    return out


def print_tables(out: dict, clips: int, timeline_seconds: float, concurrency: int) -> None:
    print(f"\n### end to end, fp32 vs the engine auto picks (load average {out['load'][0]:.1f} -> "
          f"{out['load'][1]:.1f})\n")
    print("| workload | fp32 (onnxruntime-cpu) | engine (auto) | engine backend | ratio |\n|---|---:|---:|---|---:|")
    f = out["folder"]
    if f:
        print(f"| classify folder, {clips} CREMA-D clips: files/s | {f['fp32']['files_per_s']:.2f} | "
              f"{f['engine']['files_per_s']:.2f} | {f['engine']['backend']} | "
              f"{f['engine']['files_per_s'] / f['fp32']['files_per_s']:.2f}x |")
    t = out["timeline"]
    if t:
        print(f"| {timeline_seconds:.0f}-s timeline, 3-s windows: windows/s | {t['fp32']['windows_per_s']:.1f} | "
              f"{t['engine']['windows_per_s']:.1f} | {t['engine']['backend']} | "
              f"{t['engine']['windows_per_s'] / t['fp32']['windows_per_s']:.2f}x |")
    s = out["service"]
    if s:
        print(f"| service, concurrency {concurrency}, batching on: req/s | {s['fp32']['rps']:.2f} | "
              f"{s['engine']['rps']:.2f} | {s['engine']['backend']} | {s['engine']['rps'] / s['fp32']['rps']:.2f}x |")
        print(f"| service p50 ms (infer ms) | {s['fp32']['p50_ms']:.0f} ({s['fp32']['infer_ms'] or 0:.0f}) | "
              f"{s['engine']['p50_ms']:.0f} ({s['engine']['infer_ms'] or 0:.0f}) | | |")
    if f:
        r = f["engine"]["files_per_s"] / f["fp32"]["files_per_s"]
        print(f"\ngoal: classify folder files/s >= 2.5x fp32: {r:.2f}x ({'met' if r >= 2.5 else 'missed'})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="bundle exported to the CPU targets")
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--timeline-seconds", type=float, default=600.0)
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        run_all(args.model, Path(tmp), args.clips, args.timeline_seconds, args.requests, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
