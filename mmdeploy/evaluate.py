"""Metrics of a model on a split: fused accuracy, each head's accuracy, macro-F1, ECE (15 bins).

`evaluate(run, split)` reads a bundle and the manifest it was trained on (recorded in model.json), so
`mmdeploy eval RUN` needs no other argument; training calls `predict` + `summarize` every epoch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmdeploy.errors import ConfigError
from mmdeploy.settings import cpu_count

HEADS = ("fused", "audio", "video")


@torch.no_grad()
def predict(model, loader, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits of every head over a loader of AVDataset batches -> ({head: [N, C]}, labels [N])."""
    model.eval()
    logits: dict[str, list[torch.Tensor]] = {h: [] for h in HEADS}
    labels = []
    for batch in loader:
        out = model(batch["audio"].to(device), batch["video"].to(device))
        for head in HEADS:
            logits[head].append(out[head].float().cpu())
        labels.append(batch["label"])
    return {h: torch.cat(v) for h, v in logits.items()}, torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


def macro_f1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean F1 over the classes that occur in labels or predictions (scikit-learn's convention)."""
    tp = torch.bincount(labels[pred == labels], minlength=num_classes).float()
    n_pred = torch.bincount(pred, minlength=num_classes).float()
    n_true = torch.bincount(labels, minlength=num_classes).float()
    seen = (n_pred + n_true) > 0
    f1 = 2 * tp / (n_pred + n_true).clamp(min=1)
    return f1[seen].mean().item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Sum over equal-width confidence bins (lo, hi] of |accuracy - confidence| weighted by bin size."""
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(conf, edges[1:-1], right=False)  # conf in (edges[i], edges[i+1]] -> i
    ece = torch.zeros(())
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.float().mean() * (correct[inside].mean() - conf[inside].mean()).abs()
    return ece.item()


def summarize(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    """The metrics dict used in metrics.jsonl, model.json and `mmdeploy eval --json` (fractions)."""
    fused = logits["fused"]
    return {"fused_acc": accuracy(fused, labels),
            "per_modality_acc": {m: accuracy(logits[m], labels) for m in ("audio", "video")},
            "macro_f1": macro_f1(fused.argmax(1), labels, fused.shape[1]),
            "ece": expected_calibration_error(fused.softmax(1), labels),
            "n": int(labels.numel())}


def rounded(value: Any, digits: int = 4) -> Any:
    """Every float in a (nested) metrics dict rounded to `digits` decimals, for reports (the text
    output shows 0.1 %); training logs keep full precision."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def evaluate(run: str | Path, split: str = "test", data: str | Path | None = None,
             batch_size: int = 32) -> dict[str, Any]:
    """Metrics of the bundle in `run` on `split` of its training manifest (or of `data`), floats rounded
    to 4 decimals (what `mmdeploy eval` prints, text or --json)."""
    from torch.utils.data import DataLoader

    from mmdeploy.bundle import load_bundle
    from mmdeploy.data.cache import warm_cache
    from mmdeploy.data.dataset import AVDataset
    from mmdeploy.data.manifest import read_manifest

    bundle = load_bundle(run)
    recorded = bundle.meta.get("data", {})
    manifest_path = Path(data) if data else Path(recorded.get("manifest", ""))
    if not data and not recorded.get("manifest"):
        raise ConfigError(f"{run}: model.json records no training manifest; pass --data MANIFEST")
    same = data is None or Path(data).resolve() == Path(recorded.get("manifest", "")).resolve()
    cache = Path(recorded["cache"]) if same and recorded.get("cache") else manifest_path.parent / "cache"
    manifest = read_manifest(manifest_path)
    if manifest.classes != bundle.classes:
        raise ConfigError(f"{manifest_path}: classes {manifest.classes} differ from the bundle's {bundle.classes}")
    items = manifest.split(split)
    if not items:
        raise ConfigError(f"{manifest_path}: no items in split {split!r}")
    failures = warm_cache(items, bundle.spec, cache, workers=_workers())
    dataset = AVDataset(manifest, split, bundle.spec, cache, skip=[item for item, _ in failures])
    loader = DataLoader(dataset, batch_size=batch_size)
    logits, labels = predict(bundle.model, loader)
    return {"split": split, **rounded(summarize(logits, labels))}


def _workers() -> int:
    return cpu_count()
