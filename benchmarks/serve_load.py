"""Load on the HTTP service, side by side with the offline pipeline in one run; or a soak.

    .venv/bin/python benchmarks/serve_load.py --model runs/demo [--clip FILE] [--requests 64]
        [--concurrency 1,8,32] [--batching on,off] [--max-seconds 120] [--env MMDEPLOY_MODEL_CORES=1 ...]
    .venv/bin/python benchmarks/serve_load.py --model runs/demo --soak 600 [--concurrency 16]
    .venv/bin/python benchmarks/serve_load.py --model runs/demo --fuzz /tmp/fuzz [--concurrency 4]

The script starts the service itself (`mmdeploy serve`) on a free 127.0.0.1 port in its own process group
and stops it at the end; traffic goes only there, bounded by --requests per level and --max-seconds per
level (soak: by --soak seconds).

Load: first the offline figures in this process (`mmdeploy.classify`, decoding isolated in worker
processes as the CLI does): one file's latency (classify_file, warm, median) and folder throughput
(classify_files, steady state); then per batching setting and concurrency: req/s, x offline, latency
percentiles, and the service's own per-stage profile (medians of the answers' timings_ms: decode, features,
infer; "rest" = p50 minus those: HTTP, queueing for a decode process, model-call round trip).
Goals (issue #13): concurrency 32 >= 0.9x offline files/s with p99 <= 3x p50; concurrency 1 p50 <= 1.3x
the offline single-file time.

Soak: --concurrency (last level) clients for --soak seconds; every --every seconds a row with requests,
errors, and memory: the API worker's RSS, the model worker's RSS, the largest decode process's RSS and the
proportional set size (PSS: shared pages counted once) of all the service's processes. Then the windows the
model service was called with (its own metrics) against the answers (a lost call or one run twice shows
there), the memory growth from the soak's middle third to its last and every error's cause with its count. It exits 1 on a single
error, a single lost or repeated model call, or growth past --max-growth-pct in any process kind.

Fuzz: every file of a corpus (`benchmarks/fuzz_corpus.py make --out DIR`) to /classify, every
--timeline-every-th also to /timeline; counts answers by status; 5xx or a broken connection is a failure
(exit 1). Decoder crashes must come back as 422 with the service still ready.
"""
from __future__ import annotations

import argparse
import collections
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
def service(model: Path, backend: str, batching: bool, api_workers: int, log: Path, extra_env: dict[str, str]):
    """`mmdeploy serve` on a free loopback port -> (base URL, server pid); stopped on exit."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MMDEPLOY_BATCHING": "1" if batching else "0", "MMDEPLOY_API_WORKERS": str(api_workers),
           "BENTOML_DO_NOT_TRACK": "True", **extra_env}
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
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/servers.py
        from tests.servers import stop_server

        stop_server(proc, timeout=30)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def load(url: str, data: bytes, name: str, concurrency: int, requests: int, max_seconds: float) -> dict:
    """`requests` uploads, `concurrency` at a time (stopping early at max_seconds) -> rps, percentiles,
    stage medians, errors (a Counter of causes)."""
    latencies: list[float] = []
    stages: dict[str, list[float]] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
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
                timings, what = None, ""
                try:
                    r = client.post(url + "/classify", files={"video": (name, data)})
                    if r.status_code == 200:
                        timings = r.json()["timings_ms"]
                    else:
                        what = f"{r.status_code} {r.text[:160]}"
                except httpx.HTTPError as exc:
                    what = repr(exc)[:160]
                with lock:
                    if timings is None:
                        errors[what] += 1
                    else:
                        latencies.append(time.perf_counter() - t0)
                        for k, v in timings.items():
                            stages[k].append(v)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else (latencies or [0]) * 99
    return {"n": len(latencies), "rps": len(latencies) / wall, "p50": q[49] * 1e3, "p95": q[94] * 1e3,
            "p99": q[98] * 1e3, "errors": errors,
            "stages": {k: statistics.median(v) for k, v in stages.items()}}


def offline(model: Path, backend: str, clip: Path, files: int) -> tuple[float, float, float]:
    """(median ms of one warm `classify_file` call, steady-state files/s of `classify_files` on `files` links
    to the clip: the second half of the results over the time they took, which skips pool start-up; CPU ms a
    file of that run: this process and its decode processes)."""
    from mmdeploy.classify import classify_file, classify_files
    from mmdeploy.runtime import load_predictor

    predictor = load_predictor(model, backend)
    classify_file(clip, predictor)  # warm: worker process, imports
    single = []
    for _ in range(15):
        t0 = time.perf_counter()
        classify_file(clip, predictor)
        single.append((time.perf_counter() - t0) * 1e3)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(files):  # links, not copies: the clip stays where it is
            link = Path(tmp) / f"{i}{clip.suffix}"
            link.symlink_to(clip)
            paths.append(link)
        times, cpu0 = [], sum(cpu_seconds(os.getpid()).values())
        for result in classify_files(paths, predictor):
            if "error" in result:
                raise SystemExit(f"offline pipeline failed: {result}")
            times.append(time.perf_counter())
        cpu_ms = (sum(cpu_seconds(os.getpid()).values()) - cpu0) * 1e3 / len(times)
    half = len(times) // 2
    return statistics.median(single), (len(times) - 1 - half) / (times[-1] - times[half]), cpu_ms


# ---- memory ----------------------------------------------------------------------------------------
def memory(pid: int) -> dict[str, float]:
    """MB: the API worker's RSS, the model worker's RSS, the largest decode process's RSS, the PSS of every
    process of the service; and the decode processes' ids."""
    import psutil

    out = {"api_rss": 0.0, "model_rss": 0.0, "decode_rss": 0.0, "pss": 0.0, "processes": 0, "decoders": set()}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                kind, mem = kind_of(p), p.memory_full_info()
                out["pss"] += getattr(mem, "pss", mem.rss) / 2**20
                out["processes"] += 1
                if kind in ("api", "model"):
                    out[f"{kind}_rss"] += mem.rss / 2**20
                elif kind == "decode":
                    out["decode_rss"] = max(out["decode_rss"], mem.rss / 2**20)
                    out["decoders"].add(p.pid)
    return out


def kind_of(p) -> str:
    """A service process (psutil.Process) -> "api" | "model" (BentoML's workers) | "decode" (forked by a
    forkserver) | "other" (the server's parent, the forkservers, ...)."""
    cmd = " ".join(p.cmdline())
    if "_bentoml_impl.worker.service" in cmd:
        return "model" if "av-model" in cmd else "api"
    return "decode" if "multiprocessing.forkserver" in " ".join(p.parent().cmdline()) else "other"


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each kind of process under `pid`: the API worker, the model
    worker, the decode processes (forked by a forkserver), and the rest (the server's parent, the
    forkservers). A decode process that exited between two readings counts under its parent's kind once reaped
    (the service recycles them after 500 jobs: keep a level's requests below that to keep kinds apart)."""
    import psutil

    out = {"api": 0.0, "model": 0.0, "decode": 0.0, "other": 0.0}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()  # with its reaped children's (a forkserver's exited decode processes)
                out[kind_of(p)] += t.user + t.system + t.children_user + t.children_system
    return out


def cpu_profile(pid: int, run) -> tuple[dict, dict[str, float]]:
    """run() -> (its result, CPU ms per answered request by process kind, this client's included)."""
    before, client0 = cpu_seconds(pid), time.process_time()
    result = run()
    after, client = cpu_seconds(pid), time.process_time() - client0
    n = max(result["n"], 1)
    per = {k: (after[k] - before[k]) * 1e3 / n for k in after}
    per["client"] = client * 1e3 / n
    return result, per


def model_windows(url: str) -> float:
    """Windows the model service has been called with (its adaptive batching histogram's sum)."""
    text = httpx.get(url + "/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_sum{") and 'method_name="predict"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


GROWTH_KEYS = {"api_rss": "API worker RSS", "model_rss": "model worker RSS", "decode_rss": "largest decode process RSS",
               "pss": "all processes PSS"}


def third_growth(rows: list[tuple[float, dict]]) -> dict[str, float]:
    """% growth of each memory figure: its peak over the last third of the soak against its peak over the middle
    third (decode processes are replaced as they wear, so their figure is a saw: peaks compare, samples do not)."""
    end = rows[-1][0]
    middle = [m for t, m in rows if end / 3 <= t < 2 * end / 3] or [rows[len(rows) // 2][1]]
    last = [m for t, m in rows if t >= 2 * end / 3] or [rows[-1][1]]
    out = {}
    for k in GROWTH_KEYS:
        before, after = max(m[k] for m in middle), max(m[k] for m in last)
        if before:
            out[k] = 100 * (after - before) / before
    return out


def soak(url: str, pid: int, data: bytes, name: str, concurrency: int, seconds: float, every: float,
         log: Path, max_growth_pct: float) -> int:
    """`concurrency` clients for `seconds`; a row every `every` s. Returns the number of broken rules: any
    answer but 200 (a lost call waits for its limit and comes back 503), any model call lost or run twice
    (windows the model saw != answers), memory of a process kind growing more than `max_growth_pct` % from the
    middle third of the soak to the last (`third_growth`)."""
    print(f"soak: {concurrency} clients for {seconds:.0f} s, load average {os.getloadavg()[0]:.1f}\n")
    print("| t (s) | requests | errors | p50 ms | p99 ms | API worker RSS MB | model worker RSS MB "
          "| largest decode process RSS MB | all processes PSS MB | processes |\n|---|---|---|---|---|---|---|---|---|---|")
    m = memory(pid)
    rows = [(0.0, m)]
    seen_decoders = set(m["decoders"])
    print(f"| 0 | 0 | 0 | | | {m['api_rss']:.0f} | {m['model_rss']:.0f} | {m['decode_rss']:.0f} | {m['pss']:.0f} "
          f"| {m['processes']} |")
    done = 0
    errors: collections.Counter = collections.Counter()
    windows0 = model_windows(url)
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        r = load(url, data, name, concurrency, requests=10**9, max_seconds=min(every, seconds - elapsed))
        done += r["n"]
        errors.update(r["errors"])
        m = memory(pid)
        seen_decoders |= m["decoders"]
        t = time.monotonic() - start
        rows.append((t, m))
        print(f"| {t:.0f} | {done} | {sum(errors.values())} | {r['p50']:.0f} | {r['p99']:.0f} | {m['api_rss']:.0f} "
              f"| {m['model_rss']:.0f} | {m['decode_rss']:.0f} | {m['pss']:.0f} | {m['processes']} |", flush=True)
    time.sleep(2)  # the last answers' metrics
    windows = model_windows(url) - windows0
    growth = third_growth(rows)
    total = done + sum(errors.values())
    print(f"\nrequests: {total}, answered 200: {done}, errors: {sum(errors.values())}; windows the model was called "
          f"with: {windows:.0f} (lost or repeated calls: {abs(windows - done):.0f}); decode processes seen: "
          f"{len(seen_decoders)} (recycled after MMDEPLOY_DECODE_RECYCLE_JOBS jobs)")
    print("growth (the last third's peak over the middle third's): " +
          ", ".join(f"{GROWTH_KEYS[k]} {v:+.1f} %" for k, v in growth.items()))
    for what, n in errors.most_common():
        print(f"  {n} x {what}")
    logged = [line for line in log.read_text(errors="replace").splitlines()
              if "Traceback" in line or ("[WARNING]" in line and " 50" in line) or "retried once" in line]
    for line in logged[:20]:
        print(f"  service log: {line[:300]}")
    broken = sum(errors.values()) + int(windows != done) + sum(v > max_growth_pct for v in growth.values())
    print(f"\n{'PASS' if not broken else 'FAIL'}: {broken} broken rule(s) (any error, any lost or repeated model "
          f"call, growth over {max_growth_pct:g} %)")
    return broken


def fuzz(url: str, corpus: Path, concurrency: int, timeline_every: int, log: Path) -> int:
    """Every file under `corpus` to /classify (and every `timeline_every`-th to /timeline, read to the end):
    answers by status; 5xx and broken connections are failures. Returns their count."""
    files = sorted(p for p in corpus.rglob("*") if p.is_file())
    codes: collections.Counter = collections.Counter()
    bad: list[str] = []
    lock = threading.Lock()

    def one(i_path) -> None:
        i, path = i_path
        endpoints = ["/classify"] + (["/timeline"] if timeline_every and i % timeline_every == 0 else [])
        for endpoint in endpoints:
            try:
                with httpx.stream("POST", url + endpoint, files={"video": (path.name, path.read_bytes())},
                                  timeout=300) as r:
                    body = b"".join(r.iter_bytes())
                key, ok = f"{endpoint} {r.status_code}", r.status_code < 500
                if b"decoder crashed" in body:
                    key += " (decoder crashed)"
                elif b"took longer" in body:
                    key += " (decode timeout)"
            except httpx.HTTPError as exc:
                key, ok, body = f"{endpoint} {type(exc).__name__}", False, b""
            with lock:
                codes[key] += 1
                if not ok:
                    bad.append(f"{path}: {key} {body[:160]!r}")

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, enumerate(files)))
    print(f"fuzz: {len(files)} files from {corpus} in {time.monotonic() - t0:.0f} s, concurrency {concurrency}\n")
    print("| endpoint and answer | count |\n|---|---|")
    for key, n in sorted(codes.items()):
        print(f"| {key} | {n} |")
    text = log.read_text(errors="replace")
    print(f"\nfailures (5xx or broken connection): {len(bad)}; /readyz after: "
          f"{httpx.get(url + '/readyz', timeout=10).status_code}; tracebacks in the service log: "
          f"{text.count('Traceback')}")
    for line in bad[:20]:
        print("  " + line)
    return len(bad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="bundle folder (run)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--batching", default="on,off", help="on, off or on,off")
    ap.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    ap.add_argument("--max-seconds", type=float, default=120, help="time cap per level")
    ap.add_argument("--api-workers", type=int, default=1)
    ap.add_argument("--env", action="append", default=[], help="NAME=VALUE for the service (repeatable)")
    ap.add_argument("--soak", type=float, nargs="?", const=600.0, default=None, help="soak for SECONDS (600)")
    ap.add_argument("--every", type=float, default=30, help="soak: report interval, seconds")
    ap.add_argument("--max-growth-pct", type=float, default=5.0, help="soak: most memory growth, middle third to last (%%)")
    ap.add_argument("--fuzz", type=Path, default=None, help="post every file of this corpus folder "
                                                            "(benchmarks/fuzz_corpus.py make) and count 5xx")
    ap.add_argument("--timeline-every", type=int, default=10, help="fuzz: every Nth file also to /timeline")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    extra_env = dict(item.split("=", 1) for item in args.env)
    data, name = args.clip.read_bytes(), args.clip.name
    log_dir = Path(tempfile.mkdtemp(prefix="serve_load-"))
    print(f"clip {name} ({len(data) / 1e6:.2f} MB), model {args.model}, backend {args.backend}, "
          f"{os.cpu_count()} CPUs, service env {extra_env or '{}'}, logs in {log_dir}")

    if args.fuzz is not None:
        log = log_dir / "fuzz.log"
        with service(args.model, args.backend, True, args.api_workers, log, extra_env) as (url, _):
            failures = fuzz(url, args.fuzz, levels[-1], args.timeline_every, log)
        raise SystemExit(1 if failures else 0)
    if args.soak is not None:
        log = log_dir / "soak.log"
        with service(args.model, args.backend, True, args.api_workers, log, extra_env) as (url, pid):
            load(url, data, name, 4, 16, 60)  # warm
            broken = soak(url, pid, data, name, levels[-1], args.soak, args.every, log, args.max_growth_pct)
        raise SystemExit(1 if broken else 0)

    single_ms, ceiling, offline_cpu = offline(args.model, args.backend, args.clip, args.requests)
    print(f"\noffline: one file {single_ms:.0f} ms (classify_file, warm, median of 15); "
          f"folder {ceiling:.2f} files/s (classify_files, steady state, {args.requests} files), "
          f"{offline_cpu:.1f} CPU ms a file (this process and its decode processes)\n")
    profiles = []
    print("| batching | concurrency | requests | req/s | x offline | p50 ms | p95 ms | p99 ms | p99/p50 "
          "| p50 / offline file | decode | features | infer | rest | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for batching in [b.strip() == "on" for b in args.batching.split(",")]:
        with service(args.model, args.backend, batching, args.api_workers,
                     log_dir / f"batching-{int(batching)}.log", extra_env) as (url, pid):
            load(url, data, name, 4, 16, 120)  # warm both sides and BentoML's batching optimizer (~11 calls)
            for c in levels:
                r, per = cpu_profile(pid, lambda c=c: load(url, data, name, c, args.requests, args.max_seconds))
                profiles.append(("on" if batching else "off", c, r["rps"], per))
                st = r["stages"]
                rest = r["p50"] - sum(st.get(k, 0.0) for k in ("decode", "features", "infer"))
                print(f"| {'on' if batching else 'off'} | {c} | {r['n']} | {r['rps']:.2f} | {r['rps'] / ceiling:.2f} "
                      f"| {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | {r['p99'] / max(r['p50'], 1e-9):.1f} "
                      f"| {r['p50'] / single_ms:.2f} | {st.get('decode', 0):.0f} | {st.get('features', 0):.0f} "
                      f"| {st.get('infer', 0):.0f} | {rest:.0f} | {sum(r['errors'].values())} |", flush=True)
                for what, n in r["errors"].most_common(3):
                    print(f"  {n} x {what}")
    print("\nCPU ms per answered request, by process (psutil user + system; the client is this process's "
          "load threads, on the same cores):\n")
    print("| batching | concurrency | API worker | model worker | decode processes | other | client | service total "
          "| cores x 1000 / req/s |\n|---|---|---|---|---|---|---|---|---|")
    for batching, c, rps, per in profiles:
        total = per["api"] + per["model"] + per["decode"] + per["other"]
        print(f"| {batching} | {c} | {per['api']:.1f} | {per['model']:.1f} | {per['decode']:.1f} | {per['other']:.1f} "
              f"| {per['client']:.1f} | {total:.1f} | {os.cpu_count() * 1e3 / max(rps, 1e-9):.1f} |")


if __name__ == "__main__":
    main()
