"""Cost of bundle verification: sha256 of the weights, verify_bundle (digest + seal + pickle scan, what the
ONNX Runtime and TensorRT paths pay) and load_bundle (verification + model build + load) for a random
ResNet18 x2 bundle at the CREMA-D spec. Best of 5, one torch thread. Prints a table, asserts nothing.

    .venv/bin/python benchmarks/bundle_verify.py
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path


def best(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import torch

    from mmdeploy.bundle import WEIGHTS, load_bundle, save_bundle, verify_bundle
    from mmdeploy.models import build_model, default_arch
    from mmdeploy.spec import preset

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = save_bundle(Path(tmp) / "run", build_model(default_arch(), 6).eval(), [f"c{i}" for i in range(6)],
                          preset("cremad"))
        size = (run / WEIGHTS).stat().st_size
        rows = [("sha256 of the weights", best(lambda: hashlib.sha256((run / WEIGHTS).read_bytes()).hexdigest())),
                ("verify_bundle", best(lambda: verify_bundle(run))),
                ("load_bundle (verify + build + load)", best(lambda: load_bundle(run)))]
    print(f"weights: {size / 1e6:.1f} MB (ResNet18 x2, 6 classes)")
    print(f"{'step':<38}{'ms':>8}")
    for name, seconds in rows:
        print(f"{name:<38}{seconds * 1e3:>8.0f}")


if __name__ == "__main__":
    main()
