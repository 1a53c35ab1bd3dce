"""The model bundle: a run folder, the only thing that passes between stages.

    RUN/model.safetensors   weights and buffers (no pickle anywhere); its header seals the classes,
                            ClipSpec, architecture and input shapes the weights were trained with
    RUN/model.json          format version, classes, ClipSpec, architecture, method, metrics summary,
                            `weights` {file, sha256, bytes} and `inputs` {audio: [1, F, T], video: [3, N, H, W]}
    RUN/metrics.jsonl       one line per epoch (written by training)
    RUN/plots/*.png         per-modality accuracy, balancing coefficients
    RUN/export/             model.onnx, TensorRT engines, parity.json; CPU engines (int8 ONNX files, OpenVINO
                            compiled-model caches), each digested in model.json `export.engines`

Bundles are untrusted input. Every load (`load_bundle`, and `verify_bundle` for runtimes that never
build the PyTorch model) refuses, with one line naming the file and the fix: a pickle file anywhere in
the bundle, weights whose sha256 differs from model.json, a model.json whose spec no longer gives the
recorded input shapes, and a model.json whose classes / spec / architecture differ from the ones sealed
in the weights file. The digest is checked on the same bytes that are then loaded.
Format version 1 (no digest) is refused; `mmdeploy bundle reseal RUN` re-saves trusted
version-1 weights in the current format.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmdeploy.errors import BundleError
from mmdeploy.spec import ClipSpec

FORMAT = "mmdeploy-bundle"
FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
META = "model.json"
SEALED = ("classes", "spec", "arch", "inputs")  # model.json keys also written into the weights file's header
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
_PLAIN_SUFFIXES = (".json", ".jsonl", ".safetensors", ".onnx", ".png", ".engine", ".timing-cache", ".ovblob",
                   ".yaml", ".yml", ".txt", ".md", ".csv", ".parquet", ".tmp", ".rejected")
RESEAL = "mmdeploy bundle reseal"


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

    @property
    def weights_sha256(self) -> str:
        """The digest recorded in model.json (verified against the file when the bundle was loaded)."""
        return self.meta["weights"]["sha256"]


def input_shapes(spec: ClipSpec) -> dict[str, list[int]]:
    """Per-sample model inputs for `spec`: audio [1, F, T], video [3, N, H, W]."""
    return {"audio": [1, *spec.spectrogram_shape], "video": list(spec.frames_shape)}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def save_bundle(run: str | Path, model, classes: list[str], spec: ClipSpec, method: dict[str, Any] | None = None,
                metrics: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write weights then metadata, each atomically (tmp file + rename), so a crash never leaves a
    bundle whose json points at missing or half-written weights. The weights file's header seals the
    classes, spec, architecture and input shapes; model.json records the file's sha256."""
    from safetensors.torch import save

    from mmdeploy import __version__

    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    sealed = {"classes": list(classes), "spec": spec.to_dict(), "arch": model.arch, "inputs": input_shapes(spec)}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(state, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                 **{f"mmdeploy.{k}": _canonical(v) for k, v in sealed.items()}})
    tmp = run / (WEIGHTS + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, run / WEIGHTS)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "mmdeploy_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **sealed, "num_classes": len(classes),
            "weights": {"file": WEIGHTS, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)},
            "method": method or {}, "metrics": metrics or {}, **(extra or {})}
    tmp = run / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, run / META)
    return run


def read_meta(run: str | Path) -> dict[str, Any]:
    """model.json, checked for format, version and required keys (the weights are not read)."""
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
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: expected a JSON object; retrain the bundle")
    if meta.get("format") == FORMAT and meta.get("format_version") == 1:
        raise BundleError(f"{meta_path}: bundle format version 1 records no weights digest, so its weights cannot be "
                          f"verified; retrain it, or if you trust these weights re-save it with `{RESEAL} {run}`")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{meta_path}: bundle format {meta.get('format')!r} version {meta.get('format_version')!r}; "
                          f"this mmdeploy reads {FORMAT} version {FORMAT_VERSION}")
    for key in ("classes", "spec", "arch", "inputs", "weights"):
        if key not in meta:
            raise BundleError(f"{meta_path}: key {key!r} missing; retrain the bundle")
    weights = meta["weights"]
    if not isinstance(weights, dict) or weights.get("file") != WEIGHTS or not isinstance(weights.get("sha256"), str):
        raise BundleError(f"{meta_path}: weights: needs {{file: {WEIGHTS}, sha256: HEX}}, got {weights!r}; "
                          "retrain the bundle")
    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise BundleError(f"{meta_path}: classes: needs a list of at least 2 names; restore it or retrain")
    return meta


# ---- verification ------------------------------------------------------------------------------
def _is_pickle(path: Path) -> bool:
    """Pickle protocol 2+ (starts with 0x80 and the protocol byte) or a torch.save zip (holds data.pkl)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith(".pkl") for n in zf.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def refuse_pickles(run: Path) -> None:
    """BundleError for a pickle file in RUN or one folder below (export/, checkpoint/, plots/): named
    by suffix (.pt, .pth, .pkl, ...) or, for other names such as .bin, by its first bytes."""
    files = [p for p in run.iterdir() if p.is_file()]
    for sub in run.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            files += [p for p in sub.iterdir() if p.is_file()]
    for path in sorted(files):
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES or (suffix not in _PLAIN_SUFFIXES and _is_pickle(path)):
            raise BundleError(f"{path}: pickle file in a model bundle (loading pickle can run code); remove it: "
                              f"mmdeploy bundles keep weights only in {WEIGHTS}")


def _sealed_header(data: bytes, weights: Path) -> dict[str, str]:
    """The __metadata__ of a safetensors file, read from its JSON header (no tensors parsed)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < size <= len(data) - 8:
            raise ValueError("header length out of range")
        header = json.loads(data[8:8 + size])
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not a mapping")
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise BundleError(f"{weights}: unreadable safetensors file ({exc}); restore it or retrain") from None
    return meta


def _describe(key: str, value: Any, other: Any) -> str:
    if key == "classes" and isinstance(value, list) and isinstance(other, list):
        if len(value) != len(other):
            return f"{len(value)} classes"
        i = next((i for i, (a, b) in enumerate(zip(value, other)) if a != b), 0)
        return f"class {i} {value[i]!r}"
    text = _canonical(value)
    return text if len(text) <= 60 else "another value"


def _spec_changes(now: Any, sealed: Any) -> str:
    if not isinstance(now, dict) or not isinstance(sealed, dict):
        return ""
    keys = sorted(k for k in set(now) | set(sealed) if now.get(k) != sealed.get(k))
    return " (" + ", ".join(f"{k} {now.get(k)!r} vs {sealed.get(k)!r}" for k in keys[:4]) + ")" if keys else ""


def verify_weights(run: Path, meta: dict[str, Any]) -> bytes:
    """The bytes of RUN/model.safetensors after checking them against model.json: sha256, the spec's
    input shapes against `inputs`, and classes / spec / arch / inputs against the header's seal."""
    weights, meta_path = run / WEIGHTS, run / META
    if not weights.is_file():
        raise BundleError(f"{weights}: weights missing; the bundle is incomplete, retrain it")
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != meta["weights"]["sha256"]:
        recorded = str(meta["weights"]["sha256"])[:12]
        raise BundleError(f"{weights}: sha256 {digest[:12]}... differs from the digest in {META} ({recorded}...): "
                          "the weights were modified; restore them or retrain")
    spec = ClipSpec.from_dict(meta["spec"], where=f"{meta_path}: spec")
    for name, shape in input_shapes(spec).items():
        recorded = meta["inputs"].get(name) if isinstance(meta["inputs"], dict) else None
        if recorded != shape:
            raise BundleError(f"{meta_path}: spec gives {name} input {shape} but the model was trained on "
                              f"{recorded} (inputs.{name}); restore the spec it was trained with, or retrain")
    header = _sealed_header(data, weights)
    for key in SEALED:
        raw = header.get(f"mmdeploy.{key}")
        if raw is None:
            raise BundleError(f"{weights}: header records no mmdeploy.{key}; the file was not written by "
                              "`mmdeploy train`, retrain the bundle")
        sealed = json.loads(raw)
        if _canonical(meta[key]) != _canonical(sealed):
            extra = _spec_changes(meta[key], sealed) if key == "spec" else ""
            ours, theirs = _describe(key, meta[key], sealed), _describe(key, sealed, meta[key])
            raise BundleError(f"{meta_path}: {key} ({ours}) differs from the {key} the weights were trained with "
                              f"({theirs}, sealed in {WEIGHTS}){extra}; restore {META} or retrain")
    return data


def verify_bundle(run: str | Path) -> dict[str, Any]:
    """model.json of a bundle that passed every check (pickle files, digest, shapes, seal), for
    runtimes that do not build the PyTorch model (ONNX Runtime, TensorRT)."""
    run = Path(run)
    meta = read_meta(run)
    refuse_pickles(run)
    verify_weights(run, meta)
    return meta


def load_bundle(run: str | Path, with_model: bool = True) -> Bundle:
    """Read and verify the bundle; by default build the model and load its weights, strictly."""
    run = Path(run)
    meta = read_meta(run)
    refuse_pickles(run)
    data = verify_weights(run, meta)
    spec = ClipSpec.from_dict(meta["spec"], where=f"{run / META}: spec")
    bundle = Bundle(path=run, classes=list(meta["classes"]), spec=spec, arch=meta["arch"],
                    method=meta.get("method", {}), metrics=meta.get("metrics", {}), meta=meta)
    if with_model:
        bundle.model = _load_model(run, meta, data)
    return bundle


def _load_model(run: Path, meta: dict[str, Any], data: bytes):
    from safetensors import SafetensorError
    from safetensors.torch import load

    from mmdeploy.models import build_model

    weights = run / WEIGHTS
    try:
        state = load(data)
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
    head = state.get("heads.audio.weight")
    if head is not None and head.shape[0] != len(meta["classes"]):
        raise BundleError(f"{run / META}: lists {len(meta['classes'])} classes but the weights output "
                          f"{head.shape[0]}; restore the class list or retrain")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise BundleError(f"{weights}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                              f"the architecture in {META} needs {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=True)
    return model.eval()


def record_export(bundle: Bundle, onnx_path: Path) -> None:
    """Record the sha256 of an exported ONNX file in model.json (`export.onnx_sha256`), atomically, after
    re-checking that model.json is still the one the bundle was verified with."""
    path = bundle.path / META
    if json.loads(path.read_text()) != bundle.meta:
        raise BundleError(f"{path}: changed while exporting; run `mmdeploy export {bundle.path}` again")
    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
    before = bundle.meta.get("export") if isinstance(bundle.meta.get("export"), dict) else {}
    kept = {name: e for name, e in (before.get("engines") or {}).items()  # made from these very ONNX bytes
            if isinstance(e, dict) and e.get("onnx_sha256") == digest}
    bundle.meta["export"] = {"onnx": Path(onnx_path).relative_to(bundle.path).as_posix(), "onnx_sha256": digest,
                             **({"engines": kept} if kept else {}),
                             **({"timing": before["timing"]} if kept and "timing" in before else {})}
    _write_meta(bundle, path)


def _write_meta(bundle: Bundle, path: Path) -> None:
    tmp = path.with_name(META + ".tmp")
    tmp.write_text(json.dumps(bundle.meta, indent=2) + "\n")
    os.replace(tmp, path)


def record_engine(bundle: Bundle, name: str, entry: dict[str, Any] | None,
                  timing: dict[str, Any] | None = None) -> None:
    """Record (or with entry None, forget) a CPU engine `mmdeploy export` made and gated: model.json
    `export.engines[name]` = {files: {relative path: sha256}, onnx_sha256 it was made from, precision, gate
    summary, ...}; `timing` replaces `export.timing` (what `auto` ranks CPU engines by). Atomic, after
    re-checking that model.json is still the one the bundle was verified with; needs a recorded ONNX export.
    Format 2 bundles without these keys load as before: they simply have no CPU engine."""
    path = bundle.path / META
    if json.loads(path.read_text()) != bundle.meta:
        raise BundleError(f"{path}: changed while exporting; run `mmdeploy export {bundle.path}` again")
    export = bundle.meta.get("export")
    if not isinstance(export, dict) or "onnx_sha256" not in export:
        raise BundleError(f"{path}: records no ONNX export; run `mmdeploy export {bundle.path} --onnx` first")
    engines = dict(export.get("engines") or {})
    if entry is None:
        engines.pop(name, None)
    else:
        engines[name] = entry
    export = {k: v for k, v in export.items() if k != "engines"}
    if engines:
        export["engines"] = engines
    if timing is not None:
        export["timing"] = timing
    bundle.meta["export"] = export
    _write_meta(bundle, path)


def reseal(run: str | Path) -> Path:
    """Re-save a format-1 bundle (no digest) in the current format, for weights the user trusts: the
    weights must still load strictly into the recorded architecture and class count."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mmdeploy.models import build_model

    run = Path(run)
    meta_path = run / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path}: cannot read ({exc}); nothing to reseal") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != 1:
        raise BundleError(f"{meta_path}: reseal converts {FORMAT} version 1 bundles; this one is "
                          f"{meta.get('format')!r} version {meta.get('format_version')!r}")
    refuse_pickles(run)
    try:
        state = load_file(str(run / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{run / WEIGHTS}: unreadable safetensors file ({exc})") from None
    model = build_model(meta["arch"], len(meta["classes"]))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{run / WEIGHTS}: does not fit the architecture in {META} "
                          f"({str(exc).splitlines()[0]}); retrain the bundle") from None
    spec = ClipSpec.from_dict(meta["spec"], where=f"{meta_path}: spec")
    own = {"format", "format_version", "mmdeploy_version", "created", "classes", "spec", "arch", "num_classes",
           "method", "metrics", "weights", "inputs", "export"}
    return save_bundle(run, model.eval(), meta["classes"], spec, meta.get("method"), meta.get("metrics"),
                       {k: v for k, v in meta.items() if k not in own})


def latest_bundle(root: str | Path = "runs") -> Path:
    """The newest run folder (by model.json time) under `root`, for commands given no --model."""
    root = Path(root)
    candidates = sorted(root.glob("**/" + META), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not candidates:
        raise BundleError(f"{root}: no model bundle found; train one with "
                          "`mmdeploy train training/recipes/synth-cpu.yaml --out runs/demo` or pass --model RUN")
    return candidates[-1].parent

