"""Compare's tables: per-run metrics from the bundles, per-method statistics, CSV / JSON / Markdown / PNG."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from mmdeploy.compare.stats import confidence_interval, mean, paired_t_test, stdev, wilcoxon_signed_rank

METRICS = {"fused_acc": "fused accuracy", "audio_acc": "audio-head accuracy", "video_acc": "video-head accuracy",
           "macro_f1": "macro-F1", "ece": "ECE"}
ALPHA = 0.05


def collect(out: Path, methods: list[str], seeds: int) -> list[dict[str, Any]]:
    """One row per run: the test metrics at the best validation epoch (model.json), and training seconds."""
    from mmdeploy.compare.runs import run_dir

    rows = []
    for method in methods:
        for seed in range(seeds):
            run = run_dir(out, method, seed)
            meta = json.loads((run / "model.json").read_text())
            test = meta["metrics"]["test"]
            epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            rows.append({"method": method, "seed": seed, "run": str(run), "best_epoch": meta["metrics"]["best_epoch"],
                         "val_fused_acc": meta["metrics"]["val"]["fused_acc"],
                         "train_s": round(sum(e["time_s"] for e in epochs), 1),
                         "fused_acc": test["fused_acc"], "audio_acc": test["per_modality_acc"]["audio"],
                         "video_acc": test["per_modality_acc"]["video"], "macro_f1": test["macro_f1"],
                         "ece": test["ece"]})
    return rows


def summarize_runs(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """{method: {metric: {n, mean, std, ci: [lo, hi], vs_reference: {diff, t, p_t, w_plus, p_wilcoxon}}}};
    pairs are matched by seed; the first method is the reference."""
    from mmdeploy.balance import build_method

    by = {m: sorted((r for r in runs if r["method"] == m), key=lambda r: r["seed"]) for m in methods}
    reference = methods[0]
    out: dict[str, Any] = {}
    for m in methods:
        stats: dict[str, Any] = {"heads_trained": build_method(m).heads_trained,
                                 "train_s": mean([r["train_s"] for r in by[m]])}
        for key in METRICS:
            xs = [r[key] for r in by[m]]
            lo, hi = confidence_interval(xs)
            entry: dict[str, Any] = {"n": len(xs), "mean": mean(xs), "std": stdev(xs), "ci": [lo, hi], "values": xs}
            if m != reference:
                ref = [r[key] for r in by[reference]]
                t, w = paired_t_test(ref, xs), wilcoxon_signed_rank(ref, xs)
                entry["vs_reference"] = {"diff": mean(xs) - mean(ref), "t": t["t"], "df": t["df"], "p_t": t["p"],
                                         "w_plus": w["w_plus"], "p_wilcoxon": w["p"]}
            stats[key] = entry
        out[m] = stats
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(result: dict[str, Any]) -> str:
    """The README table: accuracy in %, mean ± std [95 % CI], paired tests of fused accuracy vs the first."""
    summary, ref = result["summary"], result["reference"]
    n = len(result["seeds"])
    lines = [f"| method | fused acc % (mean ± std) | 95 % CI | audio head % | video head % | macro-F1 | ECE | "
             f"Δ fused vs {ref} | paired t p | Wilcoxon p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        f = s["fused_acc"]
        heads = [f"{_pct(s[k]['mean'])} ± {_pct(s[k]['std'])}" + ("" if s["heads_trained"] else " (untrained)")
                 for k in ("audio_acc", "video_acc")]
        vs = f.get("vs_reference")
        star = {True: " *", False: ""}
        tests = ["—", "—", "—"] if vs is None else [f"{100 * vs['diff']:+.1f}", _p(vs["p_t"]) + star[vs["p_t"] < ALPHA],
                                                    _p(vs["p_wilcoxon"]) + star[vs["p_wilcoxon"] < ALPHA]]
        lo, hi = max(0.0, f["ci"][0]), min(1.0, f["ci"][1])  # accuracy lives in [0, 1]; CSV/JSON keep the raw interval
        lines.append(f"| {m} | {_pct(f['mean'])} ± {_pct(f['std'])} | [{_pct(lo)}, {_pct(hi)}] | "
                     f"{heads[0]} | {heads[1]} | {s['macro_f1']['mean']:.3f} | {s['ece']['mean']:.3f} | "
                     + " | ".join(tests) + " |")
    lines += ["", f"{n} seeds per method (0..{n - 1}), same splits; test split at the best validation epoch. "
              f"* = p < {ALPHA} (two-sided, paired by seed, fused accuracy vs {ref}). 95 % CI: Student t over "
              f"seeds, clipped to [0, 100]. The exact Wilcoxon test "
              f"cannot go below p = {2 / 2 ** n:.4f} with {n} seeds."]
    lines += ["", *verdicts(result), "", *all_metrics(result)]
    return "\n".join(lines) + "\n"


def all_metrics(result: dict[str, Any]) -> list[str]:
    """Every metric as mean ± std [95 % CI] (accuracies in %), with the paired t p-value vs the reference."""
    summary, ref = result["summary"], result["reference"]
    lines = [f"All metrics, mean ± std [95 % CI] (paired t p vs {ref}):", "",
             "| method | " + " | ".join(METRICS.values()) + " |", "|---|" + "---|" * len(METRICS)]
    for m, s in summary.items():
        cells = []
        for key in METRICS:
            e, scale = s[key], (100 if key.endswith("_acc") else 1)
            lo, hi = max(0.0, e["ci"][0]), min(1.0, e["ci"][1])
            fmt = (lambda v: f"{scale * v:.1f}") if scale == 100 else (lambda v: f"{v:.3f}")
            vs = e.get("vs_reference")
            cells.append(f"{fmt(e['mean'])} ± {fmt(e['std'])} [{fmt(lo)}, {fmt(hi)}]"
                         + ("" if vs is None else f" (p {_p(vs['p_t'])})"))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def verdicts(result: dict[str, Any]) -> list[str]:
    """Plain sentences: which differences are significant, and whether MLB beats each simple baseline."""
    summary, ref = result["summary"], result["reference"]
    out = []
    sig = [m for m, s in summary.items() if m != ref and s["fused_acc"]["vs_reference"]["p_t"] < ALPHA]
    if sig:
        out.append(f"Significant vs {ref} at p < {ALPHA} (paired t): " + ", ".join(
            f"{m} ({100 * summary[m]['fused_acc']['vs_reference']['diff']:+.1f} points)" for m in sig) + ".")
    else:
        out.append(f"No method differs from {ref} at p < {ALPHA} (paired t) on fused test accuracy.")
    runs = {(r["method"], r["seed"]): r["fused_acc"] for r in result["runs"]}
    if "mlb" in summary:
        for base in ("ensemble", "pretrain-finetune", "pretrain-frozen", "multiloss", "joint", "mcr"):
            if base not in summary or base == "mlb":
                continue
            a = [runs[(base, s)] for s in result["seeds"]]
            b = [runs[("mlb", s)] for s in result["seeds"]]
            diff, p = mean(b) - mean(a), paired_t_test(a, b)["p"]
            if diff > 0 and p < ALPHA:
                word = "beats"
            elif diff > 0:
                word = "does not significantly beat"
            elif p < ALPHA:
                word = "does not beat (significantly worse than)"
            else:
                word = "does not beat"
            out.append(f"MLB {word} {base}: {100 * diff:+.1f} points, paired t p = {_p(p)}.")
    return out


def write_reports(result: dict[str, Any], out: Path) -> None:
    from mmdeploy.plots import plot_comparison

    (out / "compare.json").write_text(json.dumps(result, indent=1) + "\n")
    with open(out / "compare.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "metric", "n", "mean", "std", "ci95_low", "ci95_high", "diff_vs_reference",
                         "t", "p_t", "wilcoxon_w_plus", "p_wilcoxon", "heads_trained"])
        for m, s in result["summary"].items():
            for key in METRICS:
                e, vs = s[key], s[key].get("vs_reference", {})
                tests = (f"{vs[k]:.6g}" if k in vs else "" for k in ("diff", "t", "p_t", "w_plus", "p_wilcoxon"))
                writer.writerow([m, key, e["n"], f"{e['mean']:.6f}", f"{e['std']:.6f}", f"{e['ci'][0]:.6f}",
                                 f"{e['ci'][1]:.6f}", *tests, s["heads_trained"]])
    header = (f"Command: `{result['command']}`  \nDate: {result['date']}  \nMachine: {result['machine']}  \n"
              f"Recipe: {result['recipe']}" + (f", overrides {result['overrides']}" if result["overrides"] else "")
              + "\n\n")
    (out / "compare.md").write_text(header + markdown(result))
    plot_comparison(result["summary"], out / "compare.png", reference=result["reference"])
