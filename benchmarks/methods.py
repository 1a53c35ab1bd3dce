"""Balancing methods on one recipe: test accuracy (fused and per head) at the best validation epoch.

    python benchmarks/methods.py                                  # synth-cpu.yaml, 3 seeds, 5 methods
    python benchmarks/methods.py --seeds 0 --set train.epochs=10  # shorter
    python benchmarks/methods.py --methods mlb --alphas 0.5 0.8 2  # MLB alpha, chosen by the val column

Every run is the same recipe with only the method (and seed) switched; each method uses its own
default parameters unless the recipe names it. Model selection and any alpha choice use validation
accuracy only; test figures are read at the best validation epoch. Finished runs under --out are
reused, so an interrupted benchmark continues. Prints a markdown table of mean ± std over seeds.
For several seeds with confidence intervals and paired tests, use `mmdeploy compare` (the README's table).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METHODS = ("joint", "multiloss", "ogm-ge", "agm", "mlb")


def untrained_heads(method: str) -> bool:
    """The method's loss never reaches the unimodal heads (CE(fused) only): their accuracy means nothing."""
    from mmdeploy.balance import build_method

    return not build_method(method).heads_trained


def finished(run: Path) -> dict | None:
    """model.json's metrics if the run completed all its epochs (or stopped early), else None."""
    state = run / "checkpoint" / "state.json"
    if not (run / "model.json").is_file() or not state.is_file() or not (run / "plots").is_dir():
        return None
    return json.loads((run / "model.json").read_text())["metrics"]


def one_run(recipe: str, out: Path, method: str, seed: int, sets: list[str]) -> tuple[dict, float]:
    """(model.json metrics, training seconds summed over metrics.jsonl epochs), training if needed."""
    from mmdeploy.train import train

    if finished(out) is None:
        train(recipe, out, overrides=sets, method=method, seed=seed, quiet=True)
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return finished(out), sum(e["time_s"] for e in epochs)


def mean_std(values: list[float]) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="training/recipes/synth-cpu.yaml")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--alphas", nargs="+", type=float, default=[], help="MLB alphas to compare (by val)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    args = parser.parse_args()

    rows = []
    for method in args.methods:
        variants = [(f"mlb α={a:g}", [f"method.alpha={a}"]) for a in args.alphas] \
            if method == "mlb" and args.alphas else [(method, [])]
        for label, extra in variants:
            results, times = [], []
            for seed in args.seeds:
                tag = label.replace(" α=", "-a").replace(" ", "")
                metrics, seconds = one_run(args.recipe, args.out / f"{tag}-s{seed}", method, seed, args.sets + extra)
                results.append(metrics)
                times.append(seconds)
                test = metrics["test"]
                print(f"{label} seed {seed}: best epoch {metrics['best_epoch']}, val {metrics['val']['fused_acc']:.3f}, "
                      f"test {test['fused_acc']:.3f} (audio {test['per_modality_acc']['audio']:.3f}, "
                      f"video {test['per_modality_acc']['video']:.3f}) {seconds:.0f}s", flush=True)
            rows.append((method, label, results, times))

    print(f"\nrecipe {args.recipe}, seeds {args.seeds}, overrides {args.sets or 'none'}; accuracy % (mean ± std)\n")
    print("| method | val fused | test fused | test audio head | test video head | best epoch | train s/run |")
    print("|---|---|---|---|---|---|---|")
    for method, label, results, times in rows:
        heads = [mean_std([r["test"]["per_modality_acc"][m] for r in results]) for m in ("audio", "video")]
        if untrained_heads(method):
            heads = [f"({h})" for h in heads]
        print(f"| {label} | {mean_std([r['val']['fused_acc'] for r in results])} "
              f"| {mean_std([r['test']['fused_acc'] for r in results])} | {heads[0]} | {heads[1]} "
              f"| {statistics.mean(r['best_epoch'] for r in results):.1f} | {statistics.mean(times):.0f} |")
    if any(untrained_heads(method) for method, *_ in rows):
        print("\n(...): the method's loss is CE(fused) only, so its unimodal heads are never trained.")


if __name__ == "__main__":
    main()
