"""Load on the HTTP service: requests/s and latency percentiles per concurrency, batching on vs off,
against the offline batched pipeline (`mmdeploy.classify.classify_files`) as the ceiling; or a soak.

    .venv/bin/python benchmarks/serve_load.py --model runs/demo [--clip FILE] [--requests 64]
        [--concurrency 1,8,32] [--api-workers 1] [--max-seconds 120]
    .venv/bin/python benchmarks/serve_load.py --model runs/demo --soak 600 [--concurrency 8]

The script starts the service itself (`mmdeploy serve`, once with MMDEPLOY_BATCHING=1 and once with 0)
on a free 127.0.0.1 port in its own process group and stops it at the end; traffic goes only there and is
bounded by --requests per level and --max-seconds per level (soak: by --soak seconds). Goal at
concurrency 32: >= 0.8x offline files/s, p99 <= 3x p50, zero errors. Soak prints errors and the
service's resident memory (all its processes) every --every seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLIP = REPO.parent / "shared" / "media" / "cremad_1001_DFA_ANG_XX.flv"


@contextlib.contextmanager
def service(model: Path, backend: str, batching: bool, api_workers: int, log: Path):
    """`mmdeploy serve` on a free loopback port -> (base URL, server pid); stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MMDEPLOY_BATCHING": "1" if batching else "0", "MMDEPLOY_API_WORKERS": str(api_workers),
           "MMDEPLOY_DECODE_THREADS": "32", "BENTOML_DO_NOT_TRACK": "True"}
    env.pop("MMDEPLOY_MODEL", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mmdeploy", "serve", "--model", str(model), "--backend",
                                 backend, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"service did not become ready; log: {log}")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        from mmdeploy.serving_core import stop_server

        stop_server(proc, timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def load(url: str, data: bytes, name: str, concurrency: int, requests: int, max_seconds: float) -> dict:
    """`requests` uploads, `concurrency` at a time (stopping early at max_seconds) -> rps, percentiles, errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds
    todo = iter(range(requests))

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.monotonic() < stop_at:
                with lock:
                    if next(todo, None) is None:
                        return
                t0 = time.perf_counter()
                try:
                    r = client.post(url + "/classify", files={"video": (name, data)})
                    ok = r.status_code == 200
                    what = f"{r.status_code} {r.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, what = False, repr(exc)
                with lock:
                    (latencies.append(time.perf_counter() - t0) if ok else errors.append(what))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"n": len(latencies), "rps": len(latencies) / wall, "p50": q[49] * 1e3, "p95": q[94] * 1e3,
            "p99": q[98] * 1e3, "errors": len(errors), "first_error": errors[0] if errors else ""}


def offline_rate(model: Path, backend: str, clip: Path, files: int) -> float:
    """Steady-state files/s of classify_files (worker-process decoding, batched inference) on `files`
    links to the clip: the second half of the results over the time they took (skips pool start-up)."""
    from mmdeploy.classify import classify_files
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(model, backend)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(files):  # links, not copies: the clip stays where it is
            link = Path(tmp) / f"{i}{clip.suffix}"
            link.symlink_to(clip)
            paths.append(link)
        times = []
        for result in classify_files(paths, predictor):
            if "error" in result:
                raise SystemExit(f"offline pipeline failed: {result}")
            times.append(time.perf_counter())
    half = len(times) // 2
    return (len(times) - 1 - half) / (times[-1] - times[half])


def rss_mb(pid: int) -> float:
    """Resident memory of the service: the server process and all its workers."""
    import psutil

    total = 0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
    return total / 2**20


def soak(url: str, pid: int, data: bytes, name: str, concurrency: int, seconds: float, every: float) -> None:
    print("| t (s) | requests | errors | RSS (MB) |\n|---|---|---|---|")
    print(f"| 0 | 0 | 0 | {rss_mb(pid):.0f} |")
    done = errors = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        step = min(every, seconds - elapsed)
        r = load(url, data, name, concurrency, requests=10**9, max_seconds=step)
        done += r["n"]
        errors += r["errors"]
        print(f"| {time.monotonic() - start:.0f} | {done} | {errors} | {rss_mb(pid):.0f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="bundle folder (run)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--max-seconds", type=float, default=120, help="time cap per level")
    ap.add_argument("--api-workers", type=int, default=1)
    ap.add_argument("--soak", type=float, nargs="?", const=600.0, default=None, help="soak for SECONDS (600)")
    ap.add_argument("--every", type=float, default=30, help="soak: report interval, seconds")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    data, name = args.clip.read_bytes(), args.clip.name
    log_dir = Path(tempfile.mkdtemp(prefix="serve_load-"))
    print(f"clip {name} ({len(data) / 1e6:.2f} MB), model {args.model}, backend {args.backend}, "
          f"{os.cpu_count()} CPUs, logs in {log_dir}")

    if args.soak is not None:
        with service(args.model, args.backend, True, args.api_workers, log_dir / "soak.log") as (url, pid):
            load(url, data, name, 2, 4, 60)  # warm
            soak(url, pid, data, name, levels[-1], args.soak, args.every)
        return

    ceiling = offline_rate(args.model, args.backend, args.clip, args.requests)
    print(f"\noffline classify_files: {ceiling:.2f} files/s (steady state, {args.requests} files)\n")
    print("| batching | concurrency | requests | req/s | x offline | p50 ms | p95 ms | p99 ms | p99/p50 | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batching in (True, False):
        with service(args.model, args.backend, batching, args.api_workers,
                     log_dir / f"batching-{int(batching)}.log") as (url, _):
            load(url, data, name, 4, 16, 120)  # warm both sides and BentoML's batching optimizer (~11 calls)
            for c in levels:
                r = load(url, data, name, c, args.requests, args.max_seconds)
                print(f"| {'on' if batching else 'off'} | {c} | {r['n']} | {r['rps']:.2f} | {r['rps'] / ceiling:.2f} "
                      f"| {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['p99'] / r['p50']:.1f} "
                      f"| {r['errors']} |", flush=True)
                if r["errors"]:
                    print(f"  first error: {r['first_error']}")


if __name__ == "__main__":
    main()
