"""Live classification measured: `mmdeploy watch` on streams that `ffmpeg -re` publishes in real time on 127.0.0.1,
and the /ui page's live mode in headless Chromium. One command prints the README's table:

    python benchmarks/live.py --model RUN                       # RUN: a synth bundle (`make demo`: runs/demo)
    python benchmarks/live.py --model RUN --soak-minutes 10 --browser --shots benchmarks/plots

Rows (each: windows, dropped, latency p50/p99/max from the arrival of a window's last packet to its result, RSS of
the watcher and its decode worker at the start and the end of the run, CPU of both as % of one core, load average):
  udp / http / stdin / hls   a generated stream: one synthetic clip of every class, looped (H.264 GOP 24 + AAC,
                             MPEG-TS), --seconds long; HLS from a local folder served over HTTP
  shared clips over udp      ../shared/media's H.264 + AAC clips, remuxed (-c copy) to MPEG-TS
  soak                       UDP for --soak-minutes at 2-s windows / 1-s hop (RSS growth: the first minute after
                             the warm-up against the last)
  paper-size model           ResNet18 audio + video at the CREMA-D spec (random weights: the speed is the point),
                             exported to ONNX and OpenVINO here, `--backend auto` (the fastest recorded engine)
  browser (--browser)        `mmdeploy serve`, Chromium's fake camera and microphone: seconds from the page's first
                             recorded chunk to its first result; screenshots of both modes (--shots)
Everything binds 127.0.0.1; every process started here is stopped by its process group.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MEDIA = REPO.parent / "shared" / "media"
SHARED = ["derived_nasa_h264_aac.mkv", "bbb_h264_aac51.mp4", "phone_vfr_h264_aac_mono.mp4"]
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
CLI = [sys.executable, "-m", "mmdeploy"]


# ---- streams --------------------------------------------------------------------------------------------
def generated_stream(folder: Path) -> Path:
    """One 2-s synthetic clip of every class (mmdeploy.data.synth), joined into one MPEG-TS (GOP 24)."""
    from mmdeploy.data.synth import generate

    manifest = generate(folder / "synth", clips=8, seed=21, workers=1)
    clips = sorted((manifest.parent / "clips").glob("*.mp4"))
    listing = folder / "list.txt"
    listing.write_text("".join(f"file '{c}'\n" for c in clips))
    out = folder / "generated.ts"
    run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
         "-c:v", "libx264", "-preset", "veryfast", "-g", "24", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ar", "16000",
         "-f", "mpegts", str(out)])
    return out


def remuxed(clip: Path, folder: Path) -> Path:
    out = folder / (clip.stem + ".ts")
    run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", str(clip), "-map", "0:v:0", "-map", "0:a:0",
         "-c", "copy", "-f", "mpegts", str(out)])
    return out


def run(args: list[str]) -> None:
    subprocess.run(args, check=True, timeout=600)


def child(args: list[str], **kw):
    """A child in its own process group, stopped on the way out: SIGTERM, SIGKILL after 10 s."""
    from tests.servers import process_group

    return process_group(args, term_s=10.0, **kw)


def publisher(clip: Path, seconds: float, out: list[str], **kw):
    return child([FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
                  "-t", f"{seconds:g}", "-c", "copy", *out], stderr=subprocess.DEVNULL, **kw)


def udp_bound(port: int) -> bool:
    return any(f":{port:04X} " in line for line in Path("/proc/net/udp").read_text().splitlines()[1:])


def free_port() -> int:
    from tests.servers import free_port as free

    return free()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# ---- one measured run -------------------------------------------------------------------------------------
class Sampler:
    """RSS and CPU of a process and its children, every `every_s` seconds, in a thread."""

    def __init__(self, pid: int, every_s: float = 2.0):
        import psutil

        self.proc, self.every_s = psutil.Process(pid), every_s
        self.samples: list[tuple[float, float, float]] = []  # (t, rss MB, cpu s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        t0 = time.monotonic()
        while not self.stop.wait(self.every_s):
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                rss = cpu = 0.0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        rss += p.memory_info().rss / 2 ** 20
                        times = p.cpu_times()
                        cpu += times.user + times.system
                self.samples.append((time.monotonic() - t0, rss, cpu))
            except psutil.Error:
                return

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(5)


def watch(model: Path, source: str, seconds: float, stdin=None, extra: tuple[str, ...] = ()) -> tuple[list, Sampler]:
    """`mmdeploy watch SOURCE --json` until --duration SECONDS of stream; (lines, sampler)."""
    args = [*CLI, "watch", source, "--model", str(model), "--hop", "1", "--json", "--reconnects", "0",
            "--read-timeout", "5", "--open-timeout", "30", "--duration", f"{seconds:g}", *extra]
    proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    sampler = Sampler(proc.pid)
    try:
        out, err = proc.communicate(timeout=seconds + 180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    sampler.finish()
    lines = [json.loads(x) for x in out.splitlines() if x.strip()]
    if not any("summary" in x for x in lines):
        raise SystemExit(f"watch {source} gave no summary:\n{err[-2000:]}")
    return lines, sampler


def row(name: str, lines: list, sampler: Sampler, seconds: float, warm_s: float = 10.0) -> dict:
    windows = [x for x in lines if "probs" in x]
    summary = next(x["summary"] for x in lines if "summary" in x)
    lat = sorted(w["latency_ms"] for w in windows)
    pct = (lambda q: lat[min(len(lat) - 1, max(0, int(round(q / 100 * len(lat) + 0.5)) - 1))]) if lat else None
    steady = [s for s in sampler.samples if s[0] >= warm_s] or sampler.samples
    length = steady[-1][0] - steady[0][0] if steady else 0.0
    span = 60.0 if length >= 300 else 0.2 * length  # the first and the last minute (short runs: fifth)
    first = [s[1] for s in steady if s[0] <= steady[0][0] + span]
    last = [s[1] for s in steady if s[0] >= steady[-1][0] - span]
    cpu = (100 * (steady[-1][2] - steady[0][2]) / (steady[-1][0] - steady[0][0])
           if len(steady) > 1 and steady[-1][0] > steady[0][0] else None)
    backend = windows[0]["backend"] if windows else "-"
    return {"name": name, "seconds": seconds, "windows": summary["windows"], "dropped": summary["dropped"],
            "p50": pct(50) if lat else None, "p99": pct(99) if lat else None, "max": lat[-1] if lat else None,
            "rss_start": statistics.median(first) if first else None,
            "rss_end": statistics.median(last) if last else None, "cpu": cpu, "backend": backend,
            "load": os.getloadavg()[0], "reconnects": summary["reconnects"], "samples": sampler.samples}


def transports(model: Path, stream: Path, seconds: float, tmp: Path) -> list[dict]:
    rows = []
    port = free_port()
    with publisher(stream, seconds + 20, ["-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"]):
        lines, s = watch(model, f"udp://127.0.0.1:{port}", seconds)
    rows.append(row("udp (MPEG-TS)", lines, s, seconds))
    port = free_port()
    with publisher(stream, seconds + 20, ["-f", "mpegts", "-listen", "1", f"http://127.0.0.1:{port}/live.ts"]):
        time.sleep(0.5)
        lines, s = watch(model, f"http://127.0.0.1:{port}/live.ts", seconds)
    rows.append(row("http progressive", lines, s, seconds))
    with publisher(stream, seconds + 20, ["-f", "mpegts", "-"], stdout=subprocess.PIPE) as pub:
        lines, s = watch(model, "-", seconds, stdin=pub.stdout)
        pub.stdout.close()
    rows.append(row("stdin (pipe)", lines, s, seconds))
    folder = tmp / "hls"
    folder.mkdir(exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with publisher(stream, seconds + 30, ["-f", "hls", "-hls_time", "1", "-hls_list_size", "6", "-hls_flags",
                                              "delete_segments", str(folder / "live.m3u8")]):
            deadline = time.monotonic() + 20
            while not (folder / "live.m3u8").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            lines, s = watch(model, f"http://127.0.0.1:{server.server_port}/live.m3u8", seconds)
    finally:
        server.shutdown()
    rows.append(row("hls (1-s segments, local folder over http)", lines, s, seconds))
    return rows


def shared_clips(model: Path, tmp: Path, seconds: float) -> list[dict]:
    rows = []
    for name in SHARED:
        if not (MEDIA / name).is_file():
            continue
        clip = remuxed(MEDIA / name, tmp)
        port = free_port()
        with publisher(clip, seconds + 20, ["-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"]):
            lines, s = watch(model, f"udp://127.0.0.1:{port}", seconds)
        rows.append(row(f"udp: {name} (looped)", lines, s, seconds))
    return rows


def soak(model: Path, stream: Path, minutes: float, name: str = "soak: udp") -> dict:
    seconds = minutes * 60
    port = free_port()
    with publisher(stream, seconds + 30, ["-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"]):
        lines, s = watch(model, f"udp://127.0.0.1:{port}", seconds)
    return row(f"{name}, {minutes:g} min", lines, s, seconds, warm_s=30.0)


def paper_model(tmp: Path) -> Path:
    """ResNet18 audio + video at the CREMA-D spec, random weights, exported to ONNX and OpenVINO (fp32, bf16)."""
    import torch

    from mmdeploy.bundle import save_bundle
    from mmdeploy.models import build_model
    from mmdeploy.spec import preset

    torch.manual_seed(0)
    arch = {"audio": {"type": "resnet", "width": 64, "layers": [2, 2, 2, 2]},
            "video": {"type": "resnet", "width": 64, "layers": [2, 2, 2, 2]}, "fusion": {"type": "late"}}
    classes = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
    run_dir = tmp / "paper"
    save_bundle(run_dir, build_model(arch, len(classes)).eval(), classes, preset("cremad"), method={"name": "mlb"})
    run([*CLI, "export", str(run_dir), "--onnx"])
    for target in ("openvino-fp32", "openvino-bf16"):
        with contextlib.suppress(subprocess.CalledProcessError):
            run([*CLI, "export", str(run_dir), "--target", target])
    return run_dir


# ---- the browser -----------------------------------------------------------------------------------------
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
         "--autoplay-policy=no-user-gesture-required"]


def browser(model: Path, tmp: Path, demo: Path, loads: int, shots: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    from tests.servers import stop_server, wait_ready

    port = free_port()
    log = tmp / "serve.log"
    env = {**os.environ, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([*CLI, "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    firsts, latencies = [], []
    try:
        wait_ready(proc, url, log, 180)
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(str(tmp / "profile"), executable_path="/usr/bin/chromium",
                                                           args=FLAGS, viewport={"width": 1280, "height": 860})
            for i in range(loads):
                page = context.new_page()
                page.goto(url + "/ui/")
                page.click("#tab-live")
                page.click("#live-start")
                page.wait_for_function("window.mmLive.windows >= 1", timeout=60_000)
                firsts.append(page.evaluate("window.mmLive.firstResultMs") / 1e3)
                if i == loads - 1:
                    page.wait_for_function("window.mmLive.windows >= 12", timeout=60_000)
                    latencies = [page.evaluate("window.mmLive.latencyMs")]
                    if shots:
                        page.screenshot(path=str(shots / "ui_live.png"))
                page.click("#live-stop")
                page.wait_for_function("window.mmLive.summary !== null", timeout=30_000)
                latencies.append(page.evaluate("window.mmLive.summary.latency_ms.p50"))
                page.close()
            if shots:
                page = context.new_page()
                page.goto(url + "/ui/")
                mp4 = tmp / "generated.mp4"  # what a browser plays (it plays no MPEG-TS)
                run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-i", str(demo), "-c", "copy", str(mp4)])
                page.set_input_files("#file", str(mp4))
                page.click("#timeline")
                page.wait_for_function("!document.getElementById('result').hidden", timeout=90_000)
                page.locator("#lane-fused i[data-i='4']").click()
                page.wait_for_timeout(800)
                page.screenshot(path=str(shots / "ui.png"))
                page.close()
            context.close()
    finally:
        stop_server(proc)
    return {"first_s": firsts, "latency_p50_ms": latencies}


# ---- output ----------------------------------------------------------------------------------------------
def fmt(value, spec: str = ".0f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def table(rows: list[dict]) -> str:
    out = ["| stream | s | backend | windows | dropped | latency p50 / p99 / max ms | RSS start -> end MB | "
           "CPU % of a core | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        growth = (f" ({100 * (r['rss_end'] - r['rss_start']) / r['rss_start']:+.1f} %)"
                  if r["rss_start"] and r["rss_end"] else "")
        drop = f"{r['dropped']} ({100 * r['dropped'] / max(1, r['dropped'] + r['windows']):.1f} %)"
        out.append(f"| {r['name']} | {r['seconds']:g} | {r['backend']} | {r['windows']} | {drop} | "
                   f"{fmt(r['p50'])} / {fmt(r['p99'])} / {fmt(r['max'])} | "
                   f"{fmt(r['rss_start'])} -> {fmt(r['rss_end'])}{growth} | {fmt(r['cpu'])} | {r['load']:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a synth bundle (make demo: runs/demo)")
    ap.add_argument("--seconds", type=float, default=60.0, help="stream seconds per transport row")
    ap.add_argument("--soak-minutes", type=float, default=0.0, help="the long UDP run (the README's: 10)")
    ap.add_argument("--paper-minutes", type=float, default=3.0, help="the paper-size model's run (0: skip)")
    ap.add_argument("--paper-model", type=Path, help="an exported paper-size bundle (default: made here)")
    ap.add_argument("--browser", action="store_true", help="also the /ui page's live mode in Chromium")
    ap.add_argument("--loads", type=int, default=3, help="browser: page loads timed")
    ap.add_argument("--shots", type=Path, help="browser: write ui.png and ui_live.png here")
    ap.add_argument("--json", type=Path, help="also write every row (with its RSS/CPU samples) here")
    ap.add_argument("--parts", default="transports,shared,soak,paper,browser",
                    help="which parts to run (comma-separated; soak, paper and browser also need their options)")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"# benchmarks/live.py {' '.join(sys.argv[1:])}\n# {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mmlive-") as folder:
        tmp = Path(folder)
        stream = generated_stream(tmp)
        parts = set(args.parts.split(","))
        rows = transports(args.model, stream, args.seconds, tmp) if "transports" in parts else []
        if rows:
            print(table(rows), flush=True)
        if "shared" in parts:
            rows += shared_clips(args.model, tmp, min(args.seconds, 30.0))
        if args.soak_minutes and "soak" in parts:
            rows.append(soak(args.model, stream, args.soak_minutes))
        if args.paper_minutes and "paper" in parts:
            paper = args.paper_model or paper_model(tmp)
            rows.append(soak(paper, stream, args.paper_minutes, name="paper-size model: udp, 3-s windows"))
        print(table(rows), flush=True)
        result = {"rows": rows}
        if args.browser and "browser" in parts:
            if args.shots:
                args.shots.mkdir(parents=True, exist_ok=True)
            b = browser(args.model, tmp, stream, args.loads, args.shots)
            result["browser"] = b
            print(f"\nbrowser (/ui live mode, Chromium's fake camera + microphone, {len(b['first_s'])} page loads): "
                  f"first result {', '.join(f'{s:.2f}' for s in b['first_s'])} s after the first chunk was recorded; "
                  f"latency p50 per session {b['latency_p50_ms']} ms")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
