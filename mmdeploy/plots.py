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
