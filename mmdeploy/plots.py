"""Training plots (matplotlib, Agg): validation accuracy per head, balancing coefficients per step."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(7, 4), dpi=100)


def plot_accuracy(epochs: list[dict[str, Any]], path: str | Path) -> Path:
    """Fused and per-modality validation accuracy over epochs (rows of metrics.jsonl)."""
    plt, fig, ax = _figure()
    x = [row["epoch"] for row in epochs]
    ax.plot(x, [100 * row["val"]["fused_acc"] for row in epochs], "k-o", label="fused", linewidth=2)
    for modality, style in (("audio", "C0-s"), ("video", "C1-^")):
        ax.plot(x, [100 * row["val"]["per_modality_acc"][modality] for row in epochs], style, label=modality)
    stage2 = [row["epoch"] for row in epochs if row.get("stage") == 2]
    if stage2 and stage2[0] > x[0]:  # two-stage methods: unimodal pre-training, then fusion
        ax.axvline(stage2[0] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(stage2[0] - 0.5, 2, " stage 2: fusion", color="grey", fontsize=8)
        ax.text(x[0], 2, "stage 1: unimodal", color="grey", fontsize=8)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Accuracy per head")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def plot_coefficients(steps: list[dict[str, Any]], path: str | Path) -> Path:
    """Every logged coefficient k_* over training steps (rows of steps.jsonl), raw and smoothed;
    1 = no modulation. A method without coefficients that logs permutation importances (MCR's jsd_*)
    gets those instead."""
    plt, fig, ax = _figure()
    keys = sorted({k for row in steps for k in row if k.startswith("k_")})
    jsd = not keys and any(k.startswith("jsd_") for row in steps for k in row)
    if jsd:
        keys = sorted({k for row in steps for k in row if k.startswith("jsd_")})
    for i, key in enumerate(keys):
        x = [row["step"] for row in steps if key in row]
        y = [row[key] for row in steps if key in row]
        ax.plot(x, y, color=f"C{i}", linewidth=0.6, alpha=0.35)
        ax.plot(x, _moving_mean(y, max(1, len(y) // 40)), color=f"C{i}", linewidth=2, label=key)
    if not jsd:
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    if not keys:
        ax.text(0.5, 0.5, "this method logs no coefficients", ha="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="JSD(prediction, modality permuted)" if jsd else "gradient coefficient k",
           title="Permutation importance per modality" if jsd else "Balancing coefficients")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend()
    return _save(plt, fig, path)


def plot_comparison(summary: dict[str, Any], path: str | Path, reference: str | None = None) -> Path:
    """compare's plot: per method, bars of fused / audio-head / video-head test accuracy (mean over seeds)
    with 95 % confidence intervals, and the seeds as dots; untrained heads are hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * len(methods) + 2), 4.5), dpi=100)
    width = 0.26
    for j, (key, label, colour) in enumerate((("fused_acc", "fused", "0.25"), ("audio_acc", "audio head", "C0"),
                                              ("video_acc", "video head", "C1"))):
        for i, m in enumerate(methods):
            e = summary[m][key]
            x = i + (j - 1) * width
            lo, hi = max(0.0, e["ci"][0]), min(1.0, e["ci"][1])
            untrained = key != "fused_acc" and not summary[m]["heads_trained"]
            ax.bar(x, 100 * e["mean"], width, color=colour, alpha=0.35 if untrained else 0.9,
                   hatch="//" if untrained else None, label=label if i == 0 else None)
            ax.errorbar(x, 100 * e["mean"], yerr=[[100 * (e["mean"] - lo)], [100 * (hi - e["mean"])]], color="k",
                        capsize=3, linewidth=1)
            ax.scatter([x] * len(e["values"]), [100 * v for v in e["values"]], s=6, color="k", zorder=3)
    ax.set_xticks(range(len(methods)), [m + (" (ref)" if m == reference else "") for m in methods], rotation=15)
    ax.set(ylabel="test accuracy (%)", title="Methods over seeds: mean and 95 % CI (hatched: head untrained)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path)


def _moving_mean(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` steps (shorter at the start), so the trend shows through the noise."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _save(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
