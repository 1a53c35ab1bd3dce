"""GPU check of the torch-CUDA backend: fp16 autocast parity against fp32, and latency/throughput of
fp32 eager vs fp16 vs fp16 + CUDA graphs at batch 1/8/32. Prints a table; asserts nothing.

    python benchmarks/gpu_check.py                       # paper ResNet18 encoders, CREMA-D spec, random weights
    python benchmarks/gpu_check.py --arch synth-cpu --spec synth --seconds 2

Needs torch only (no PyAV, bentoml, onnxruntime or TensorRT): it imports mmdeploy.models, mmdeploy.spec and
mmdeploy.runtime.torch_backend from this checkout. Without CUDA it says so and exits 0.
Goal: fp16 + CUDA graphs >= 3x fp32 eager at batch 1.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SYNTH_CPU_ARCH = {"audio": {"type": "resnet", "width": 16, "layers": [1, 1, 1, 1]},
                  "video": {"type": "resnet", "width": 16, "layers": [1, 1, 1, 1]}, "fusion": {"type": "late"}}


def inputs(spec, batch: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 1, *spec.spectrogram_shape), dtype=np.float32),
            rng.standard_normal((batch, *spec.frames_shape), dtype=np.float32))


def parity(reference: dict, other: dict, tolerance: float = 5e-2) -> dict:
    """Largest logit difference (absolute and relative to the largest |logit|), fused top-1 agreement, and
    ok = diff <= tolerance * max(1, largest |logit|) (the rule of `mmdeploy export`, export/torch-cuda-fp16.yaml)."""
    import numpy as np

    diff = max(float(np.abs(reference[k] - other[k]).max()) for k in reference)
    scale = max(float(np.abs(reference[k]).max()) for k in reference)
    agree = float(np.mean(reference["fused"].argmax(1) == other["fused"].argmax(1)))
    return {"max_abs_diff": diff, "rel_diff": diff / max(scale, 1e-12), "top1_agreement": agree,
            "ok": diff <= tolerance * max(1.0, scale)}


def latency_ms(predictor, audio, video, seconds: float, min_iters: int = 10) -> list[float]:
    """Wall-clock ms per logits() call (host arrays in, host arrays out), after warm-up."""
    for _ in range(3):
        predictor.logits(audio, video)
    times, start = [], time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        predictor.logits(audio, video)
        times.append((time.perf_counter() - t) * 1000)
    return times


def predictors(model_fn, classes, spec, batches):
    """(label, predictor) for fp32 eager, fp16 autocast eager, fp16 autocast + CUDA graphs."""
    from mmdeploy.runtime.torch_backend import TorchPredictor

    return [("fp32 eager", TorchPredictor(model_fn(), classes, spec, device="cuda")),
            ("fp16 eager", TorchPredictor(model_fn(), classes, spec, device="cuda", fp16=True)),
            ("fp16 + graphs", TorchPredictor(model_fn(), classes, spec, device="cuda", fp16=True,
                                             graph_batches=tuple(batches)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("resnet18", "synth-cpu"), default="resnet18")
    parser.add_argument("--spec", default="cremad", help="ClipSpec preset (cremad, synth, ave, ucf101)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per mode and batch size")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: nothing to check here (run this on a GPU machine)")
        return 0
    import copy

    from mmdeploy.models import build_model, default_arch
    from mmdeploy.spec import preset

    torch.backends.cudnn.benchmark = True
    spec = preset(args.spec)
    classes = [f"c{i}" for i in range(6)]
    torch.manual_seed(0)
    base = build_model(default_arch() if args.arch == "resnet18" else SYNTH_CPU_ARCH, len(classes)).eval()
    runs = predictors(lambda: copy.deepcopy(base), classes, spec, args.batches)
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"arch {args.arch}, spec {args.spec} (audio {spec.spectrogram_shape}, frames {spec.frames_shape}), "
          "random weights and inputs")

    print(f"\n{'parity vs fp32 eager':<22}{'batch':>6}{'max|diff|':>11}{'rel':>9}{'top-1 agree':>13}"
          f"{'tol 5e-2':>10}")
    for b in sorted({1, min(8, max(args.batches))}):
        audio, video = inputs(spec, b, seed=b)
        reference = runs[0][1].logits(audio, video)
        for label, predictor in runs[1:]:
            p = parity(reference, predictor.logits(audio, video))
            print(f"{label:<22}{b:>6}{p['max_abs_diff']:>11.2e}{p['rel_diff']:>9.1e}{p['top1_agreement']:>13.2f}"
                  f"{'ok' if p['ok'] else 'OFF':>10}")

    print(f"\n{'mode':<16}{'batch':>6}{'median ms':>11}{'p95 ms':>9}{'clips/s':>10}{'vs fp32':>9}")
    speedup_b1 = None
    for b in args.batches:
        audio, video = inputs(spec, b)
        fp32_median = None
        for label, predictor in runs:
            ms = sorted(latency_ms(predictor, audio, video, args.seconds))
            med, p95 = statistics.median(ms), ms[int(round(0.95 * (len(ms) - 1)))]
            fp32_median = fp32_median or med
            print(f"{label:<16}{b:>6}{med:>11.2f}{p95:>9.2f}{b * 1000 / med:>10.1f}{fp32_median / med:>8.2f}x")
            if b == 1 and label == "fp16 + graphs":
                speedup_b1 = fp32_median / med
    if speedup_b1 is not None:
        print(f"\nfp16 + CUDA graphs vs fp32 eager at batch 1: {speedup_b1:.2f}x "
              f"(goal >= 3x: {'met' if speedup_b1 >= 3 else 'missed'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
