"""What balancing costs per training step, and our coefficient computation vs a per-sample loop.

    .venv/bin/python benchmarks/balance_overhead.py [--device cpu|cuda] [--batch 8] [--size 32] [--width 16]

Table 1: median time of one full step (zero_grad, forward, loss, backward, after_backward, Adam
step) for each method on the same model and batch; methods are interleaved round by round so machine
load hits them alike. Ratios are against multiloss (MLB's goal: <= 1.02x); the after_backward column
isolates the balancing work itself, which step medians on a loaded machine cannot resolve below a
few %.

Table 2: computing s, r and k from the heads' logits (`true_class_scores`, `mlb_ratios`,
`mlb_coefficients` on the logits' device) vs a per-sample Python loop on the CPU that recomputes the
batch softmax for every sample, as the MLB paper's code does.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from mmdeploy.balance import build_method, mlb_coefficients, mlb_ratios, true_class_scores
from mmdeploy.models import build_model

METHODS = {"joint": {}, "multiloss": {}, "mlb": {"alpha": 0.8}, "ogm-ge": {"alpha": 0.8}, "agm": {"alpha": 1.5}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[float, float]]:
    """{method: (median step seconds, median after_backward seconds)}."""
    arch = {m: {"type": "resnet", "width": args.width, "layers": [1, 1, 1, 1]} for m in ("audio", "video")}
    torch.manual_seed(0)
    audio = torch.randn(args.batch, 1, args.size, args.size, device=device)
    video = torch.randn(args.batch, 3, 3, args.size, args.size, device=device)
    labels = torch.randint(0, 6, (args.batch,), device=device)
    runs = {}
    for name, params in METHODS.items():
        torch.manual_seed(0)
        model = build_model({**arch, "fusion": {"type": "late"}}, 6).to(device).train()
        runs[name] = (model, build_method(name, **params), torch.optim.Adam(model.parameters(), 1e-4))
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in METHODS}
    for rnd in range(args.rounds + 1):
        for name, (model, method, opt) in runs.items():
            for _ in range(args.steps):
                sync(device)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                outputs = method.forward(model, audio, video)
                method.loss(outputs, labels).backward()
                sync(device)
                t1 = time.perf_counter()
                method.after_backward(model, outputs, labels, epoch=0)
                sync(device)
                t2 = time.perf_counter()
                opt.step()
                sync(device)
                if rnd:  # round 0 warms up
                    times[name].append((time.perf_counter() - t0, t2 - t1))
    return {name: (statistics.median(t for t, _ in ts), statistics.median(a for _, a in ts))
            for name, ts in times.items()}


def naive_coefficients(logits: list[torch.Tensor], labels: torch.Tensor, alpha: float) -> list[float]:
    """Per-sample loop on the CPU, recomputing the softmax of the whole batch for every sample."""
    y = labels.cpu()
    scores = []
    for z in logits:
        z = z.detach().cpu()
        scores.append(sum(torch.softmax(z, dim=1)[i][y[i]] for i in range(len(y))).item() / len(y))
    ratios = [sum(scores[j] for j in range(len(scores)) if j != i) / (len(scores) - 1) / s for i, s in enumerate(scores)]
    return [1 + math.tanh(alpha * (r - 1)) for r in ratios]


def ours(logits: list[torch.Tensor], labels: torch.Tensor, alpha: float) -> list[float]:
    return mlb_coefficients(mlb_ratios(true_class_scores(torch.stack(logits), labels)), alpha).tolist()


def best_time(fn, repeats: int, device: torch.device) -> float:
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1 keeps a shared machine's noise low)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="spectrogram and frame side")
    parser.add_argument("--width", type=int, default=16, help="ResNet width (64 = ResNet18)")
    parser.add_argument("--steps", type=int, default=5, help="steps per method per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--classes", type=int, default=28)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; ResNet width {args.width} [1,1,1,1], late fusion, "
          f"batch {args.batch}, audio 1x{args.size}x{args.size}, video 3x3x{args.size}x{args.size}\n")

    medians = step_times(args, device)
    base = medians["multiloss"][0]
    print("| method | median step (ms) | vs multiloss | after_backward (ms) | after_backward / multiloss step |")
    print("|---|---:|---:|---:|---:|")
    for method, (t, after) in medians.items():
        print(f"| {method} | {t * 1e3:.2f} | {t / base:.3f}x | {after * 1e3:.3f} | {after / base:.2%} |")

    print("\n| batch | ours (us) | per-sample loop (us) | speed-up |\n|---:|---:|---:|---:|")
    for b in (32, 64, 128, 256):
        torch.manual_seed(b)
        logits = [torch.randn(b, args.classes, device=device) for _ in range(2)]
        labels = torch.randint(0, args.classes, (b,), device=device)
        assert all(abs(x - y) < 1e-4 for x, y in zip(ours(logits, labels, 0.8), naive_coefficients(logits, labels, 0.8)))
        t_ours = best_time(lambda: ours(logits, labels, 0.8), 50, device)
        t_naive = best_time(lambda: naive_coefficients(logits, labels, 0.8), 3, device)
        print(f"| {b} | {t_ours * 1e6:.0f} | {t_naive * 1e6:.0f} | {t_naive / t_ours:.0f}x |")


if __name__ == "__main__":
    main()
