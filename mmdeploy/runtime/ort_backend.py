"""ONNX Runtime backend: RUN/export/model.onnx on the CPU, CUDA or TensorRT execution provider.

Classes and ClipSpec come from the ONNX metadata, so this backend needs no PyTorch weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmdeploy.errors import MmdeployError
from mmdeploy.runtime.base import OUTPUT_NAMES, OUTPUTS, Predictor
from mmdeploy.settings import cpu_count
from mmdeploy.spec import ClipSpec

BACKEND_PROVIDERS = {"onnxruntime-cpu": ("CPUExecutionProvider",),
                     "onnxruntime-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
                     "onnxruntime-tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                              "CPUExecutionProvider"),
                     "onnxruntime-int8": ("CPUExecutionProvider",)}  # the int8 QDQ file of `--target onnx-int8`


def cores() -> int:
    """CPU cores this process may run on (settings.cpu_count: its affinity)."""
    return cpu_count()


def usable_providers(wanted: tuple[str, ...]) -> tuple[str, ...]:
    """`wanted` filtered to the providers this onnxruntime build has, CPU always last as the fallback."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    kept = tuple(p for p in wanted if p in have and p != "CPUExecutionProvider")
    return (*kept, "CPUExecutionProvider")


def read_onnx_metadata(path: str | Path) -> tuple[ClipSpec, list[str], dict[str, str]]:
    """(spec, classes, all metadata_props) of an ONNX file written by `mmdeploy export` (read without the
    onnx package: runtime/onnx_props.py)."""
    from mmdeploy.runtime.onnx_props import metadata_props

    try:
        props = metadata_props(Path(path).read_bytes())
    except ValueError as exc:
        raise MmdeployError(f"{path}: not a readable ONNX file ({exc}); re-export with `mmdeploy export RUN`") from None
    if "mmdeploy.spec" not in props or "mmdeploy.classes" not in props:
        raise MmdeployError(f"{path}: ONNX file has no mmdeploy metadata; re-export with `mmdeploy export RUN`")
    return ClipSpec.from_json(props["mmdeploy.spec"]), json.loads(props["mmdeploy.classes"]), props


def verify_onnx(path: str | Path, meta: dict, recorded: str | None = None,
                fix: str | None = None) -> tuple[ClipSpec, list[str], dict[str, str]]:
    """read_onnx_metadata, after checking the file against the verified model.json `meta` of its bundle:
    its sha256 against `export.onnx_sha256` (recorded by `mmdeploy export`; or `recorded`, the digest model.json
    keeps for a derived file such as an int8 one), and its metadata (weights digest, spec, classes,
    architecture) against model.json. BundleError, one line, otherwise; `fix` says how to remake the file."""
    import hashlib

    from mmdeploy.errors import BundleError

    path = Path(path)
    fix = fix or f"re-export with `mmdeploy export {path.parent.parent} --onnx`"
    if recorded is None:
        recorded = (meta.get("export") or {}).get("onnx_sha256") if isinstance(meta.get("export"), dict) else None
    if recorded is None:
        raise BundleError(f"{path}: model.json records no digest for this ONNX file; {fix}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != recorded:
        raise BundleError(f"{path}: sha256 {digest[:12]}... differs from the digest in model.json "
                          f"({str(recorded)[:12]}...): the file was modified; {fix}")
    spec, classes, props = read_onnx_metadata(path)
    checks = {"mmdeploy.weights_sha256": (props.get("mmdeploy.weights_sha256"), meta["weights"]["sha256"]),
              "mmdeploy.spec": (spec, ClipSpec.from_dict(meta["spec"])),
              "mmdeploy.classes": (classes, list(meta["classes"])),
              "mmdeploy.arch": (json.loads(props.get("mmdeploy.arch", "null")), meta["arch"])}
    for key, (mine, theirs) in checks.items():
        if json.dumps(mine if not isinstance(mine, ClipSpec) else mine.to_dict(), sort_keys=True) != \
                json.dumps(theirs if not isinstance(theirs, ClipSpec) else theirs.to_dict(), sort_keys=True):
            what = f" ({len(mine)} classes, model.json has {len(theirs)})" \
                if key == "mmdeploy.classes" and len(mine) != len(theirs) else ""
            raise BundleError(f"{path}: metadata {key} differs from model.json{what}; {fix}")
    return spec, classes, props


def make_session(path: str | Path, providers: tuple[str, ...], threads: int | None = None):
    """An InferenceSession with all graph optimisations and intra-op threads = cores, which do not spin-wait
    between calls. Our predictors share their cores with decode processes (the CLI, batch, live, the service's
    model worker beside its API worker): spinning threads took those cores from decoding. Measured 2026-12-02
    (2 cores, `benchmarks/serve_load.py --requests 256 --concurrency 32`, the synth bundle): the model worker
    used 33.6 CPU-ms a request spinning and 6.4-7.2 without; offline files/s 30 -> 42, the service's req/s
    21 -> 27-31. Alone, the paper-size model pays 2-10 % at batch 1-8 (38.8 -> 39.4-43.2 ms at batch 1)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or cores()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the docstring
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))


class OrtPredictor(Predictor):
    """`meta` (the bundle's verified model.json) makes the file and its metadata checked against the
    bundle (verify_onnx; `recorded`: the digest to check it against, for a derived file such as an int8
    one); without it the ONNX metadata alone gives classes and spec."""

    def __init__(self, onnx_path: str | Path, backend: str = "onnxruntime-cpu", threads: int | None = None,
                 meta: dict | None = None, recorded: str | None = None):
        read = read_onnx_metadata if meta is None else lambda p: verify_onnx(p, meta, recorded)
        self.spec, self.classes, self.metadata = read(onnx_path)
        self.session = make_session(onnx_path, BACKEND_PROVIDERS[backend], threads)
        width = self.session.get_outputs()[0].shape[-1]
        if isinstance(width, int) and width != len(self.classes):
            raise MmdeployError(f"{onnx_path}: the model outputs {width} classes, its metadata lists "
                                f"{len(self.classes)}; re-export with `mmdeploy export RUN --onnx`")
        self.backend = backend
        self.providers = tuple(self.session.get_providers())
        self._names = list(OUTPUT_NAMES)

    def _logits(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self._names, {"audio": audio, "video": video})
        return dict(zip(OUTPUTS, values))
