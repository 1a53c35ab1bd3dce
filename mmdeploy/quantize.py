"""Windows for the CPU engines' calibration and gate, and fp32 ONNX -> int8 QDQ ONNX.

    calibration_windows(bundle, count, seed)  `count` windows drawn with `seed` from the bundle's own training
                                              split, through its feature cache (what training saw); random
                                              inputs when model.json records no manifest that exists (said so)
    held_out_windows(bundle, count, seed)     the test split (else val), with labels, for the accuracy gate
    quantize(quantizer, src, dst, windows)    int8 QDQ ONNX by onnxruntime.quantization.quantize_static (per-channel
                                              int8 weights, int8 activations, MinMax ranges) or by NNCF (the `nncf`
                                              extra); `exclude` keeps nodes fp32. Export measures both (auto)
    fp32_fallbacks(path)                      what to keep in fp32, step by step, when the gate asks for it:
                                              nothing, then the heads and fusion (Gemm/MatMul), then also each
                                              encoder's first convolution

Windows are produced in chunks (`Windows.chunks`), so a few hundred paper-size windows never sit in memory at
once. The int8 file carries the fp32 file's mmdeploy metadata (spec, classes, weights digest), so the runtime
checks it against model.json exactly as it checks model.onnx.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmdeploy.bundle import Bundle
from mmdeploy.errors import MediaError, MmdeployError

CHUNK = 8  # windows per model call while calibrating and gating


def manifest_path(bundle: Bundle) -> Path | None:
    """The data manifest model.json records (data.manifest, data or manifest), resolved beside cwd or RUN."""
    data = bundle.meta.get("data")
    raw = data.get("manifest") if isinstance(data, dict) else data if isinstance(data, str) else None
    raw = raw or bundle.meta.get("manifest")
    if not isinstance(raw, str):
        return None
    for candidate in (Path(raw), bundle.path / raw):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class Windows:
    """Model inputs, made chunk by chunk: `items` (manifest windows) through the feature cache, or `count`
    random ones. `labels` (class indices) when they come from a manifest; `source` describes them."""
    bundle: Bundle
    source: dict[str, Any]
    items: list = field(default_factory=list)
    labels: list[int] | None = None
    count: int = 0
    seed: int = 0
    failed: int = 0

    def __len__(self) -> int:
        return len(self.items) if self.items else self.count

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray, list[int] | None]]:
        """(audio [b,1,F,T], video [b,3,N,H,W], labels or None) per chunk; a window whose file fails to
        decode is dropped (counted in `failed`) with its label."""
        spec = self.bundle.spec
        if not self.items:
            rng = np.random.default_rng(self.seed)
            for i in range(0, self.count, size):
                b = min(size, self.count - i)
                yield (rng.standard_normal((b, 1, *spec.spectrogram_shape), dtype=np.float32),
                       rng.standard_normal((b, *spec.frames_shape), dtype=np.float32), None)
            return
        cache = _cache(self.bundle)
        for i in range(0, len(self.items), size):
            audio, video, labels = [], [], []
            for j, item in enumerate(self.items[i:i + size]):
                try:
                    a, v = cache.get(item) if cache is not None else _features(item, spec)
                except (MediaError, MmdeployError, OSError):
                    self.failed += 1
                    continue
                audio.append(np.zeros((1, *spec.spectrogram_shape), np.float32) if a is None else np.asarray(a))
                video.append(np.zeros(spec.frames_shape, np.float32) if v is None else np.asarray(v))
                labels.append(self.labels[i + j] if self.labels is not None else -1)
            if audio:
                yield (np.stack(audio).astype(np.float32), np.stack(video).astype(np.float32),
                       labels if self.labels is not None else None)


def _features(item, spec):
    from mmdeploy.features import file_features

    a, v = file_features(item.path, spec, start=item.start, end=item.end, audio_path=item.audio_path)
    return (None if a is None else a.numpy()), (None if v is None else v.numpy())


def _cache(bundle: Bundle):
    """The feature cache model.json records (data.cache), where training put its features; None without one."""
    from mmdeploy.data.cache import FeatureCache

    data = bundle.meta.get("data")
    root = data.get("cache") if isinstance(data, dict) else None
    return FeatureCache(root, bundle.spec) if isinstance(root, str) and root else None


def _draw(items: list, count: int, seed: int) -> list:
    """`count` of `items` (all when fewer), drawn without replacement with `seed`, in manifest order."""
    if len(items) <= count:
        return list(items)
    picked = np.random.default_rng(seed).choice(len(items), size=count, replace=False)
    return [items[i] for i in sorted(picked)]


RANDOM_MAX = 128  # random stand-ins say nothing about accuracy: a few suffice for ranges and agreement


def _split_windows(bundle: Bundle, splits: tuple[str, ...], count: int, seed: int, what: str) -> Windows:
    path = manifest_path(bundle)
    random = {"random": True, "count": min(count, RANDOM_MAX), "seed": seed}
    if path is None:
        note = f"random inputs: model.json records no data manifest that exists, so {what} cannot use real windows"
        return Windows(bundle, {**random, "note": note}, count=random["count"], seed=seed)
    from mmdeploy.data.manifest import read_manifest

    manifest = read_manifest(path)
    for split in splits:
        pool = [it for it in manifest.split(split) if it.label in bundle.classes]
        if pool:
            items = _draw(pool, count, seed)
            return Windows(bundle, {"manifest": str(path), "split": split, "count": len(items), "of": len(pool),
                                    "seed": seed, "through": "feature cache" if _cache(bundle) else "decoding"},
                           items=items, labels=[bundle.classes.index(it.label) for it in items], seed=seed)
    return Windows(bundle, {**random, "note": f"random inputs: {path} has no {' or '.join(splits)} windows of this "
                                              f"bundle's classes"}, count=random["count"], seed=seed)


def calibration_windows(bundle: Bundle, count: int, seed: int) -> Windows:
    """Calibration: `count` windows of the training split (seeded draw), or random inputs (said so)."""
    return _split_windows(bundle, ("train",), count, seed, "calibration")


def held_out_windows(bundle: Bundle, count: int, seed: int) -> Windows:
    """The gate's windows: the test split (else val), at most `count`, with labels; or random inputs."""
    return _split_windows(bundle, ("test", "val"), count, seed + 1, "the accuracy gate")


# ---- int8 -------------------------------------------------------------------------------------------
def prepare(src: Path, dst: Path) -> Path:
    """ONNX Runtime's quantization pre-processing (shape inference, BatchNorm folded into Conv): the graph
    whose node names `exclude` refers to."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    return dst


def fp32_fallbacks(prepared: Path) -> list[tuple[str, list[str]]]:
    """[(what, node names kept fp32)], from nothing to more: the steps tried when the gate fails."""
    import onnx

    graph = onnx.load(str(prepared), load_external_data=False).graph
    heads = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    stems = []
    for inp in graph.input:  # the first Conv reached from each input, through non-Conv nodes
        frontier, seen, found = [inp.name], set(), False
        while frontier and not found:
            nxt = []
            for t in frontier:
                for n in consumers.get(t, []):
                    if n.name in seen:
                        continue
                    seen.add(n.name)
                    if n.op_type == "Conv":
                        stems.append(n.name)
                        found = True
                    else:
                        nxt += list(n.output)
            frontier = nxt
    return [("none", []), ("heads and fusion", heads), ("heads, fusion and encoder stems", heads + stems)]


def _reader(windows: Windows):
    """An onnxruntime CalibrationDataReader over the chunks of `windows`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator | None = None

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.it is None:
                self.it = windows.chunks()
            chunk = next(self.it, None)
            return None if chunk is None else {"audio": chunk[0], "video": chunk[1]}

        def rewind(self) -> None:
            self.it = None

    return Reader()


def quantize_onnxruntime(prepared: Path, dst: Path, windows: Windows, metadata: dict[str, str],
                         exclude: list[str] = ()) -> Path:
    """int8 QDQ file at `dst` (atomically): per-channel symmetric int8 weights, asymmetric int8 activations,
    MinMax ranges over `windows`; `exclude`: node names left in fp32. `metadata`: the mmdeploy props to carry."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="mmdeploy-int8-") as tmp:
        raw = Path(tmp) / "int8.onnx"
        quantize_static(str(prepared), str(raw), _reader(windows), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                        extra_options={"ActivationSymmetric": False,
                                       "WeightSymmetric": True})
        return _with_metadata(raw, dst, metadata)


HOW = {"onnxruntime": {"quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
                       "weights": "int8 symmetric", "activations": "int8 asymmetric", "ranges": "MinMax"},
       "nncf": {"quantizer": "nncf.quantize (ONNX backend, target_device CPU)", "format": "QDQ", "per_channel": True,
                "weights": "int8 symmetric", "activations": "int8 (NNCF performance preset)",
                "ranges": "NNCF min/max + fast bias correction"}}


def quantizers(choice: str) -> list[str]:
    """The quantizers `calibration.quantizer` asks for: auto = every one installed (NNCF first), each measured."""
    from importlib.util import find_spec

    if choice == "nncf" and find_spec("nncf") is None:
        from mmdeploy.errors import ConfigError

        raise ConfigError("calibration.quantizer: nncf is not installed; install the extra: "
                          "pip install 'mmdeploy-av[nncf]' (from a checkout: uv sync --extra nncf), or use auto")
    if choice != "auto":
        return [choice]
    return (["nncf"] if find_spec("nncf") is not None else []) + ["onnxruntime"]


def quantize(quantizer: str, prepared: Path, dst: Path, windows: Windows, metadata: dict[str, str],
             exclude: list[str] = ()) -> Path:
    """int8 QDQ file at `dst` made by `quantizer` (onnxruntime | nncf) from the prepared fp32 graph."""
    if quantizer == "nncf":
        return quantize_nncf(prepared, dst, windows, metadata, exclude)
    return quantize_onnxruntime(prepared, dst, windows, metadata, exclude)


def quantize_nncf(prepared: Path, dst: Path, windows: Windows, metadata: dict[str, str],
                  exclude: list[str] = ()) -> Path:
    """int8 QDQ file at `dst` (atomically) by NNCF's post-training quantization of the ONNX graph, calibrated
    on `windows` one at a time; `exclude`: node names left in fp32. NNCF's progress output is dropped."""
    import contextlib
    import io
    import logging

    import onnx

    class Source:  # re-iterable: NNCF walks the calibration set once per statistic pass
        def __iter__(self):
            for a, v, _ in windows.chunks(1):
                yield {"audio": a, "video": v}

    quiet = io.StringIO()  # NNCF's import notes and progress bars: the CLI's output stays its own (one line, JSON)
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        import nncf

        nncf.set_log_level(logging.ERROR)
        quantized = nncf.quantize(onnx.load(str(prepared)), nncf.Dataset(Source()), subset_size=max(1, len(windows)),
                                  target_device=nncf.TargetDevice.CPU,
                                  ignored_scope=nncf.IgnoredScope(names=list(exclude), validate=False)
                                  if exclude else None)
    with tempfile.TemporaryDirectory(prefix="mmdeploy-int8-") as tmp:
        raw = Path(tmp) / "int8.onnx"
        onnx.save_model(quantized, str(raw), save_as_external_data=False)
        return _with_metadata(raw, dst, metadata)


def _with_metadata(raw: Path, dst: Path, metadata: dict[str, str]) -> Path:
    import onnx

    model = onnx.load(str(raw))
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    tmp = dst.with_name(dst.name + ".tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    os.replace(tmp, dst)
    return dst


def int8_metadata(onnx_path: Path, source_sha256: str, how: dict[str, Any]) -> dict[str, str]:
    """The fp32 file's mmdeploy props plus what made the int8 file."""
    from mmdeploy.runtime.ort_backend import read_onnx_metadata

    props = {k: v for k, v in read_onnx_metadata(onnx_path)[2].items() if k.startswith("mmdeploy.")}
    return {**props, "mmdeploy.precision": "int8", "mmdeploy.source_onnx_sha256": source_sha256,
            "mmdeploy.quantization": json.dumps(how, sort_keys=True)}


def scratch(out: Path) -> Path:
    """A temp folder beside `out` (same file system: finished files are renamed into place)."""
    return Path(tempfile.mkdtemp(prefix=".quantize-", dir=out))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
