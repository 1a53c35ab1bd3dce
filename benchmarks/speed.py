"""The sections `cold` and `segments` of benchmarks/classify.py (see its docstring): cold CLI latency before/after
torch left the inference path, and one long file's timeline with 1 and 2 decode workers against ffmpeg."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO.parent / "shared" / "media" / "cremad_1001_DFA_ANG_XX.flv"


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "?"
    return f"{model}, {os.cpu_count()} cores"


def load() -> str:
    return "load average " + " / ".join(f"{v:.1f}" for v in os.getloadavg())


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def effective_cores(n: int = 20_000_000) -> float:
    """How many cores this run really gets now: one busy loop alone vs one per core at once (a shared machine
    gives less than os.cpu_count(); parallel decoding cannot beat what this says)."""
    import multiprocessing

    t0 = time.perf_counter()
    _spin(n)
    one = time.perf_counter() - t0
    cores = os.cpu_count() or 1
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_spin, [1] * cores)  # the processes are up
        t0 = time.perf_counter()
        pool.map(_spin, [n] * cores, chunksize=1)
        return cores * one / (time.perf_counter() - t0)


def env_for(tree: Path, cache: Path | None) -> dict[str, str]:
    """PYTHONPATH = tree; `cache`: a bytecode cache folder (None: compile every import, write nothing)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env["PYTHONPATH"] = str(tree)
    if cache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="nocache_")  # empty: no cache is read either
    else:
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t0, proc


def export_tree(rev: str, dest: Path) -> Path | None:
    """The mmdeploy package as of git revision `rev`, for the 'before' rows (None without git or the revision)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "mmdeploy"], capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def cold_section(run: Path, tmp: Path, repeats: int, before: str) -> None:
    clip = CLIP if CLIP.exists() else None
    if clip is None:
        sys.path.insert(0, str(Path(__file__).parent))
        from classify import write_clip

        clip = write_clip(tmp / "clip.mp4", 2.2, 25, (480, 360))
    cmd = [sys.executable, "-m", "mmdeploy", "classify", str(clip), "--model", str(run), "--json"]
    trees = {"this tree": REPO}
    old = export_tree(before, tmp / "before")
    if old is not None:
        trees[f"before ({before})"] = old
    caches = {name: tmp / f"pyc-{i}" for i, name in enumerate(trees)}
    rows: dict[tuple[str, str], list[float]] = {}
    print(f"cold `mmdeploy classify {clip.name} --model RUN --json` (RUN: synth-cpu architecture, ONNX); "
          f"{machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; at start: {load()}\n")
    for name, tree in trees.items():  # fill each bytecode cache once, untimed
        _, proc = timed(cmd, env_for(tree, caches[name]), tmp)
        if proc.returncode != 0:
            print(f"{name}: the command failed: {proc.stderr.strip().splitlines()[-1:]}")
    version = [sys.executable, "-m", "mmdeploy", "--version"]
    for _ in range(repeats):
        rows.setdefault(("`mmdeploy --version` (the floor: Python + the CLI's imports)", "cached"), []).append(
            timed(version, env_for(REPO, caches["this tree"]), tmp)[0])
        for name, tree in trees.items():
            for mode in ("cached", "none"):
                wall, proc = timed(cmd, env_for(tree, caches[name] if mode == "cached" else None), tmp)
                backend = json.loads(proc.stdout.splitlines()[-1])["backend"] if proc.returncode == 0 else "failed"
                rows.setdefault((f"{name}: classify ({backend})", mode), []).append(wall)
    print("| whole process | bytecode | median s | min s |\n|---|---|---:|---:|")
    for (name, mode), walls in rows.items():
        label = "cached" if mode == "cached" else "none (every import compiled)"
        print(f"| {name} | {label} | {statistics.median(walls):.2f} | {min(walls):.2f} |")
    print(f"\nat end: {load()}\n")
    importtime(cmd, caches["this tree"], tmp)


PRELOAD_IMPORT = "import mmdeploy.preload as p, importlib; [importlib.import_module(m) for m in p.PRELOAD]"
# the CLI process only: the forkserver would inherit -X importtime from sys._xoptions
MAIN_ONLY = ("import sys, runpy; sys._xoptions.pop('importtime', None); sys.argv = ['mmdeploy', *sys.argv[1:]]; "
             "runpy.run_module('mmdeploy', run_name='__main__')")


def importtime(cmd: list[str], cache: Path, tmp: Path) -> None:
    """The largest top-level imports (cumulative ms) of the CLI process and of the workers' forkserver."""
    env = env_for(REPO, cache)
    for title, argv in (("CLI process", [sys.executable, "-X", "importtime", "-c", MAIN_ONLY, *cmd[3:]]),
                        ("decode workers' forkserver (its PRELOAD)", [sys.executable, "-X", "importtime", "-c",
                                                                     PRELOAD_IMPORT])):
        proc = subprocess.run(argv, env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
        top = []
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "|" in line:
                _, cumulative, name = line.split("|")
                if not name.startswith("  ") and cumulative.strip().isdigit():
                    top.append((int(cumulative) / 1e3, name.strip()))
        top.sort(reverse=True)
        total = sum(ms for ms, _ in top)
        print(f"`python -X importtime`, {title}: {total:.0f} ms of imports; largest: "
              + ", ".join(f"{name} {ms:.0f}" for ms, name in top[:10]) + "\n")


def long_file(tmp: Path, seconds: float) -> Path:
    """640x360 25-fps H.264 (x264 veryfast, B-frames, b-pyramid; a moving test pattern with grain) + stereo
    44.1-kHz AAC, made by ffmpeg (fast: minutes of PyAV frame writing otherwise)."""
    out = tmp / f"long{seconds:.0f}s.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=640x360:rate=25,noise=alls=10:allf=t+u", "-f", "lavfi", "-i",
                    "sine=frequency=220:sample_rate=44100:beep_factor=4", "-t", str(seconds), "-c:v", "libx264",
                    "-preset", "veryfast", "-x264-params", "bframes=3:b-pyramid=normal", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-ac", "2", "-b:a", "128k", str(out)], check=True)
    return out


def segments_section(run: Path, tmp: Path, seconds: float | None, rounds: int, workers: list[int]) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from classify import cpu_wall

    from mmdeploy import pipeline
    from mmdeploy.classify import classify_timeline
    from mmdeploy.media import iter_windows

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("segments: needs ffmpeg on PATH (it makes the long file and is the reference)")
        return
    seconds = seconds or 600.0
    long = long_file(tmp, seconds)
    predictor = pipeline.load_model(run)
    pipeline.start_decoders(keep=max(workers) + 1)
    pipeline.warm_decoder()
    print(f"timeline of a {seconds:.0f}-s 640x360 H.264 (B-frames) + AAC file, `--window 2 --hop 2`; "
          f"{machine()}; backend {predictor.backend}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"at start: {load()}; cores this run gets (busy-loop test): {effective_cores():.2f} of {os.cpu_count()}\n")
    quiet = {"check": True, "stdout": subprocess.DEVNULL}
    cli_env = env_for(REPO, tmp / "pyc-cli")
    cli = [sys.executable, "-m", "mmdeploy", "classify", str(long), "--model", str(run), "--window", "2", "--hop",
           "2", "--json"]
    subprocess.run(cli + ["--workers", "1"], env=cli_env, cwd=tmp, capture_output=True)  # fill the bytecode cache
    decoding: dict[str, dict] = {}

    def inproc(w: int):
        def go() -> None:
            decoding[f"in-process, {w}"] = [r for r in classify_timeline(long, predictor, window=2.0, hop=2.0,
                                                                         workers=w) if "windows" in r][0]["decoding"]
        return go

    rows = [("`ffmpeg -i FILE -f null -` (2 threads)",
             lambda: subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-i", str(long), "-f", "null", "-"], **quiet)),
            ("`ffmpeg -threads 1 -i FILE -f null -`",
             lambda: subprocess.run([ffmpeg, "-v", "error", "-nostdin", "-threads", "1", "-i", str(long), "-f", "null",
                                     "-"], **quiet))]
    rows += [(f"ours, whole process (`mmdeploy classify ... --workers {w}`)",
              lambda w=w: subprocess.run(cli + ["--workers", str(w)], env=cli_env, cwd=tmp, capture_output=True,
                                         check=True)) for w in workers]
    rows += [(f"ours, in-process (`classify_timeline`, {w} decode worker{'s' if w > 1 else ''})", inproc(w))
             for w in workers]
    rows += [("audio pass alone (in-process, no worker: the part a split does not divide)",
              lambda: sum(1 for _ in iter_windows(long, predictor.spec, 2.0, 2.0, tracks=("audio",))))]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in rows}
    for _ in range(rounds):
        for name, fn in rows:
            results[name].append(cpu_wall(fn))
    walls = {name: statistics.median(w for _, w in r) for name, r in results.items()}
    ref = walls[rows[0][0]]
    print("| what | wall s | CPU s | x `ffmpeg -f null` (2 threads) |\n|---|---:|---:|---:|")
    for name, r in results.items():
        cpu = "—" if "whole process" in name else f"{statistics.median(c for c, _ in r):.2f}"
        print(f"| {name} | {walls[name]:.2f} | {cpu} | {ref / walls[name]:.2f}x |")
    print(f"\n(CPU: this process and its live children; a CLI's decode workers exit unreaped, so its CPU is not "
          f"counted.) decoding: {json.dumps(decoding)}; at end: {load()}")
    if len(workers) >= 2 and workers[0] == 1:
        t1 = walls[f"ours, in-process (`classify_timeline`, 1 decode worker)"]
        t2 = walls[f"ours, in-process (`classify_timeline`, {workers[1]} decode workers)"]
        w2 = workers[1]
        b = (t1 - t2) / (1 - 1 / w2)
        a = t1 - b
        audio = walls[rows[-1][0]]
        t16 = max(a + b / 15, audio)
        print(f"\n16-core arithmetic (projected, not measured): fitting T(w) = a + b / w to the in-process rows "
              f"gives a = {a:.2f} s (not divided: the parent's merge and inference, start-up) and b = {b:.2f} s "
              f"(divided among workers); with 15 video workers and the audio pass ({audio:.2f} s alone, a floor) on "
              f"16 cores: T = max(a + b / 15, audio) = {t16:.2f} s = {ref / t16:.1f}x this machine's `ffmpeg -f "
              f"null`, {seconds / t16:.0f}x real time. Cores this run got at the end: {effective_cores():.2f}.")
    print()
