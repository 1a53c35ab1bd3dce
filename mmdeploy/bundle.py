"""The model bundle: a run folder, the only thing that passes between stages.

    RUN/model.safetensors   weights and buffers (no pickle anywhere)
    RUN/model.json          format version, classes, ClipSpec, architecture, method, metrics summary
    RUN/metrics.jsonl       one line per epoch (written by training)
    RUN/plots/*.png         per-modality accuracy, balancing coefficients
    RUN/export/             model.onnx, TensorRT engines, parity.json
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmdeploy.errors import BundleError
from mmdeploy.spec import ClipSpec

FORMAT = "mmdeploy-bundle"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


@dataclass
class Bundle:
    path: Path
    classes: list[str]
    spec: ClipSpec
    arch: dict[str, Any]
    method: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # AVClassifier in eval mode, on CPU

    @property
    def export_dir(self) -> Path:
        return self.path / "export"


def save_bundle(run: str | Path, model, classes: list[str], spec: ClipSpec, method: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write weights then metadata, each atomically (tmp file + rename), so a crash never leaves a
    bundle whose json points at missing or half-written weights."""
    from safetensors.torch import save_file

    from mmdeploy import __version__

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = run / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    os.replace(tmp, run / WEIGHTS)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "mmdeploy_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "classes": list(classes), "spec": spec.to_dict(), "arch": model.arch,
            "num_classes": len(classes), "method": method or {}, "metrics": metrics or {}, **(extra or {})}
    tmp = run / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, run / META)
    return run


def read_meta(run: str | Path) -> dict[str, Any]:
    run = Path(run)
    meta_path = run / META
    if not run.exists():
        raise BundleError(f"{run}: no such bundle; train one with `mmdeploy train RECIPE --out {run}`")
    if not meta_path.is_file():
        raise BundleError(f"{run}: not a model bundle ({META} missing); pass a run folder written by `mmdeploy train`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc}); re-export or retrain the bundle") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: bundle format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                          f"this mmdeploy reads {FORMAT} version {FORMAT_VERSION}")
    for key in ("classes", "spec", "arch"):
        if key not in meta:
            raise BundleError(f"{meta_path}: key {key!r} missing")
    return meta


def load_bundle(run: str | Path, with_model: bool = True) -> Bundle:
    """Read model.json and (by default) build the model and load its weights, strictly."""
    run = Path(run)
    meta = read_meta(run)
    spec = ClipSpec.from_dict(meta["spec"], where=f"{run / META}: spec")
    bundle = Bundle(path=run, classes=list(meta["classes"]), spec=spec, arch=meta["arch"],
                    method=meta.get("method", {}), metrics=meta.get("metrics", {}), meta=meta)
    if with_model:
        bundle.model = _load_model(run, meta)
    return bundle


def _load_model(run: Path, meta: dict[str, Any]):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mmdeploy.models import build_model

    weights = run / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{weights}: weights missing; the bundle is incomplete, retrain it")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{weights}: unreadable safetensors file ({exc})") from None
    model = build_model(meta["arch"], len(meta["classes"]))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        raise BundleError(f"{weights}: {what} for the architecture in {META} "
                          f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise BundleError(f"{weights}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                              f"the architecture in {META} needs {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def latest_bundle(root: str | Path = "runs") -> Path:
    """The newest run folder (by model.json time) under `root`, for commands given no --model."""
    root = Path(root)
    candidates = sorted(root.glob("**/" + META), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not candidates:
        raise BundleError(f"{root}: no model bundle found; train one with "
                          "`mmdeploy train training/recipes/synth-cpu.yaml --out runs/demo` or pass --model RUN")
    return candidates[-1].parent
