"""What decoding in a worker process (mmdeploy.isolate) costs a single file, side by side with decoding here.

    python benchmarks/isolation.py --model RUN [--clip ../shared/media/grid_s1_bbaf2n.mpg] [--repeats 20]

Rows (milliseconds, median and interquartile range over --repeats, the two ways interleaved so machine
noise hits both alike): classify_file in this process (isolated=False) and in a warm worker (the default);
a fresh worker from the warm forkserver; the bare round trip of a job that returns feature-sized arrays
without decoding. Then the one-off costs: the forkserver's start (imports torch and PyAV once) and a
crashing file (bbb_h264_aac51.mp4 with 256 flipped bytes) followed by a good one.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def features_like(audio_shape: tuple, video_shape: tuple) -> dict:
    """A job that decodes nothing and returns arrays the size of one file's features: the pure cost of a
    worker round trip (send the job, pickle and pipe the answer back)."""
    import numpy as np

    return {"audio": np.ones(audio_shape, np.float32), "video": np.ones(video_shape, np.float32)}


def row(name: str, xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"| {name} | {statistics.median(xs):.1f} | {q[0]:.1f} to {q[2]:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--clip", type=Path, default=REPO.parent / "shared" / "media" / "grid_s1_bbaf2n.mpg")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import runpy

    import numpy as np
    import torch

    from mmdeploy import isolate
    from mmdeploy.classify import classify_file
    from mmdeploy.errors import MediaError
    from mmdeploy.runtime import load_predictor

    torch.set_num_threads(1)
    predictor = load_predictor(args.model, "torch", threads=1)
    t0 = time.perf_counter()
    isolate.checkin(isolate.Worker())  # cold: starts the forkserver, which imports torch + PyAV
    forkserver_ms = ms(t0)
    classify_file(args.clip, predictor), classify_file(args.clip, predictor, isolated=False)  # warm-up both
    here, worker = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        classify_file(args.clip, predictor, isolated=False)
        here.append(ms(t0))
        t0 = time.perf_counter()
        classify_file(args.clip, predictor)
        worker.append(ms(t0))
    spec = predictor.spec
    shapes = ((1, *spec.spectrogram_shape), tuple(spec.frames_shape))
    trip = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        isolate.call(args.clip, features_like, shapes)
        trip.append(ms(t0))
    fresh = []
    for _ in range(5):
        isolate.shutdown()  # no idle worker: the next call starts one from the warm forkserver
        t0 = time.perf_counter()
        classify_file(args.clip, predictor)
        fresh.append(ms(t0))
    fuzz = runpy.run_path(str(REPO / "benchmarks" / "fuzz_corpus.py"))
    with tempfile.TemporaryDirectory() as tmp:
        crash = fuzz["crash_file"](Path(tmp) / "crash.mp4")
        t0 = time.perf_counter()
        try:
            classify_file(crash, predictor)
            crash_reason = "no crash"
        except MediaError as exc:
            crash_reason = exc.reason.split(";")[0]
        crash_ms = ms(t0)
        t0 = time.perf_counter()
        classify_file(args.clip, predictor)
        after_ms = ms(t0)

    print(f"clip: {args.clip.name}, model window {predictor.spec.window_seconds:g} s, {args.repeats} repeats, "
          f"torch threads 1\n")
    print("| single file, classify_file | median ms | IQR ms |")
    print("|---|---|---|")
    print(row("in this process (isolated=False)", here))
    print(row("warm worker process (the default)", worker))
    print(row("added by the worker (paired difference)", [w - h for w, h in zip(worker, here)]))
    print(row("fresh worker from the warm forkserver", fresh))
    mb = (np.prod(shapes[0]) + np.prod(shapes[1])) * 4 / 2**20
    print(row(f"round trip alone: a job returning {mb:.2f} MB of features", trip))
    print(f"\none-off: forkserver start + first worker {forkserver_ms:.0f} ms; crashing file -> error in "
          f"{crash_ms:.0f} ms ({crash_reason}); the next file then {after_ms:.0f} ms (fresh worker)")


if __name__ == "__main__":
    main()
