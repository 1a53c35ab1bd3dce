"""Bundle -> RUN/export/: one self-contained ONNX file with the ClipSpec inside, a parity report against
PyTorch on real clips, optionally a TensorRT engine and a BentoML model-store entry.

    model.onnx      inputs audio [B,1,F,T], video [B,3,N,H,W]; outputs fused_logits, audio_logits,
                    video_logits [B,C] (ONNX names must be unique, so outputs carry a `_logits` suffix);
                    metadata_props: mmdeploy.spec (ClipSpec JSON), mmdeploy.classes (JSON list), bundle format
    parity.json     ONNX Runtime (and TensorRT) vs PyTorch: max_abs_diff, top1_agreement per batch size

Deploy targets (export/*.yaml) say the backend, precision, batch profile, providers and parity tolerance.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmdeploy.bundle import FORMAT, FORMAT_VERSION, META, WEIGHTS, Bundle, load_bundle
from mmdeploy.errors import ConfigError, MediaError, MmdeployError
from mmdeploy.runtime.base import INPUTS, OUTPUT_NAMES, OUTPUTS
from mmdeploy.runtime.ort_backend import read_onnx_metadata, usable_providers
from mmdeploy.spec import ClipSpec
from mmdeploy.targets import FP32_LAYER_KINDS, Target, TargetFile, load_target, parse_target  # noqa: F401

ONNX_FILE = "model.onnx"
PARITY_FILE = "parity.json"
BENTO_MODEL = "av-classifier"


# ---- ONNX --------------------------------------------------------------------------------------
class LogitsTuple(nn.Module):
    """AVClassifier with both inputs present, returning (fused, audio, video) logits as a tuple."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(audio, video)
        return tuple(out[o] for o in OUTPUTS)


def onnx_metadata(bundle: Bundle) -> dict[str, str]:
    return {"mmdeploy.format": FORMAT, "mmdeploy.format_version": str(FORMAT_VERSION),
            "mmdeploy.weights_sha256": bundle.weights_sha256,
            "mmdeploy.spec": bundle.spec.to_json(), "mmdeploy.spec_digest": bundle.spec.digest(),
            "mmdeploy.classes": json.dumps(bundle.classes), "mmdeploy.arch": json.dumps(bundle.arch, sort_keys=True)}


def onnx_is_current(bundle: Bundle, onnx_path: Path) -> bool:
    """True when `onnx_path` was exported from exactly these weights, spec and classes, and model.json
    records its digest (so the runtimes will accept it)."""
    from mmdeploy.runtime.trt_files import file_sha256

    if not onnx_path.is_file():
        return False
    try:
        props = read_onnx_metadata(onnx_path)[2]
    except MmdeployError:
        return False
    want = onnx_metadata(bundle)
    recorded = bundle.meta.get("export") if isinstance(bundle.meta.get("export"), dict) else {}
    return all(props.get(k) == want[k] for k in ("mmdeploy.weights_sha256", "mmdeploy.spec", "mmdeploy.classes",
                                                 "mmdeploy.arch")) \
        and recorded.get("onnx_sha256") == file_sha256(onnx_path)


def example_inputs(spec: ClipSpec, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal((batch, 1, *spec.spectrogram_shape), dtype=np.float32)
    video = rng.standard_normal((batch, *spec.frames_shape), dtype=np.float32)
    return audio, video


def export_onnx(bundle: Bundle, path: str | Path | None = None) -> Path:
    """Export with torch.onnx (the torch.export-based exporter), dynamic batch axis, one file, checked.
    Written to the bundle's RUN/export/model.onnx, its sha256 goes into model.json (`export.onnx_sha256`)."""
    import logging

    import onnx

    path = Path(path) if path else bundle.export_dir / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    audio, video = (torch.from_numpy(x) for x in example_inputs(bundle.spec, 2))
    batch = torch.export.Dim("batch", min=1, max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # optional torchvision ops, not ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        program = torch.onnx.export(LogitsTuple(bundle.model).eval(), (audio, video), None, dynamo=True,
                                    input_names=list(INPUTS), output_names=list(OUTPUT_NAMES),
                                    dynamic_shapes={"audio": {0: batch}, "video": {0: batch}}, verbose=False)
    proto = program.model_proto
    for key, value in onnx_metadata(bundle).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(proto, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    if path.resolve() == (bundle.export_dir / ONNX_FILE).resolve():  # the runtimes check this digest
        from mmdeploy.bundle import record_export

        record_export(bundle, path)
    return path


# ---- parity ------------------------------------------------------------------------------------
def parity_inputs(bundle: Bundle, batch: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Features of `batch` clips from the bundle's data manifest (test split first), or random inputs;
    the third value says which, for the report."""
    from mmdeploy.quantize import manifest_path

    manifest = manifest_path(bundle)
    if manifest is None:
        return (*example_inputs(bundle.spec, batch), "random: model.json records no data manifest that exists")
    try:
        from mmdeploy.data.manifest import read_manifest
        from mmdeploy.features import file_features

        items = read_manifest(manifest).items
        items = sorted(items, key=lambda it: it.split != "test")[:batch]
        audio, video = [], []
        for it in items:
            a, v = file_features(it.path, bundle.spec, start=it.start, end=it.end, audio_path=it.audio_path)
            audio.append(np.zeros((1, *bundle.spec.spectrogram_shape), np.float32) if a is None else a.numpy())
            video.append(np.zeros(bundle.spec.frames_shape, np.float32) if v is None else v.numpy())
    except (ImportError, MediaError, MmdeployError, OSError) as exc:
        return (*example_inputs(bundle.spec, batch), f"random: features of {manifest} failed ({exc})")
    if not items:
        return (*example_inputs(bundle.spec, batch), f"random: {manifest} lists no clips")
    reps = -(-batch // len(items))
    stack = lambda xs: np.stack((xs * reps)[:batch]).astype(np.float32)  # noqa: E731
    return stack(audio), stack(video), f"clips: {len(items)} from {manifest}"


def torch_logits(model: nn.Module, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        out = model(torch.from_numpy(audio), torch.from_numpy(video))
    return {o: out[o].numpy() for o in OUTPUTS}


def compare(reference: dict[str, np.ndarray], other: dict[str, np.ndarray], tolerance: float) -> dict[str, Any]:
    """max_abs_diff over all three logits, fused top-1 agreement, and whether the diff is in tolerance
    (tolerance is absolute, scaled by max(1, largest |logit|) so large logits are not held to 1e-4 absolute)."""
    diff = max(float(np.max(np.abs(reference[o] - other[o]))) for o in OUTPUTS)
    scale = max(1.0, max(float(np.max(np.abs(reference[o]))) for o in OUTPUTS))
    agree = float(np.mean(reference["fused"].argmax(1) == other["fused"].argmax(1)))
    return {"max_abs_diff": diff, "top1_agreement": agree, "ok": diff <= tolerance * scale}


def check_parity(bundle: Bundle, run_other, batches: tuple[int, ...], tolerance: float, label: str,
                 inputs: tuple[np.ndarray, np.ndarray, str] | None = None) -> dict[str, Any]:
    """Run `run_other(audio, video) -> logits dict` against PyTorch fp32 on the same inputs at each batch size
    (`inputs` from parity_inputs, computed here when not given)."""
    audio, video, source = inputs or parity_inputs(bundle, max(batches))
    rows = []
    for b in batches:
        reference = torch_logits(bundle.model, audio[:b], video[:b])
        rows.append({"batch": b, **compare(reference, run_other(audio[:b], video[:b]), tolerance)})
    return {"backend": label, "inputs": source, "tolerance": tolerance, "batches": list(batches),
            "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "top1_agreement": min(r["top1_agreement"] for r in rows),
            "ok": all(r["ok"] for r in rows), "per_batch": rows}


# ---- the export command ------------------------------------------------------------------------
def _ort_logits(onnx_path: Path, providers: tuple[str, ...]):
    from mmdeploy.runtime.ort_backend import make_session

    session = make_session(onnx_path, providers)

    def run(audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(list(OUTPUT_NAMES), {"audio": audio, "video": video})
        return dict(zip(OUTPUTS, values))

    return run


def _torch_cuda_parity(bundle: Bundle, target: Target, inputs) -> dict[str, Any]:
    """torch on CUDA (fp16 autocast, CUDA graphs if the target asks) vs fp32 CPU; skipped without CUDA."""
    import copy

    from mmdeploy.runtime.torch_backend import TorchPredictor

    label = f"torch-cuda-{target.precision}"
    if not torch.cuda.is_available():
        return {"backend": label, "ok": True, "skipped": "no CUDA GPU visible to torch"}
    graphs = (target.batch["min"], target.batch["opt"], target.batch["max"]) if target.cuda_graphs else ()
    predictor = TorchPredictor(copy.deepcopy(bundle.model), bundle.classes, bundle.spec, device="cuda",
                               fp16=target.precision == "fp16", graph_batches=graphs)
    return check_parity(bundle, predictor.logits, target.parity_batches, target.tolerance, predictor.backend, inputs)


def _record(reports: dict[str, Any], out: Path, meta: dict | None = None) -> None:
    """parity.json: these reports, plus the CPU engines' reports that model.json still records (`meta`)."""
    from mmdeploy.cpu_engines import keep_reports

    kept = keep_reports(out, meta) if meta is not None else {}
    (out / PARITY_FILE).write_text(json.dumps({**kept, **reports}, indent=2) + "\n")


def _fail_if_off(report: dict[str, Any], path: Path, artifact: Path | None = None) -> None:
    """Raise when a parity report is outside tolerance, first renaming the artifact to *.rejected so no
    runtime loads it."""
    if report["ok"]:
        return
    note = ""
    if artifact is not None and artifact.is_file():
        artifact.replace(artifact.with_name(artifact.name + ".rejected"))
        note = f"; {artifact.name} renamed to {artifact.name}.rejected"
    raise MmdeployError(f"{path}: {report['backend']} parity outside tolerance (max_abs_diff "
                        f"{report['max_abs_diff']:.3g} > {report['tolerance']:g}, top-1 agreement "
                        f"{report['top1_agreement']:.2f}){note}; see {path / PARITY_FILE}")


def export(run: str | Path, target: Target | None = None, onnx: bool = True, trt: bool = False,
           precision: str | None = None, bento: bool = False, calibration: int | None = None,
           timing_seconds: float = 1.0) -> dict[str, Any]:
    """The whole `mmdeploy export` flow; returns a summary (paths, parity, engine, bento tag).
    `onnx=False` reuses RUN/export/model.onnx when it was exported from the current weights and spec.
    A CPU-engine target (openvino-*, onnx-int8) then makes, gates, times and records its engine
    (mmdeploy/cpu_engines.py); `calibration` overrides its number of calibration windows, `timing_seconds` is
    the time each engine is timed for per batch size."""
    target = target or load_target(f"trt-{precision or 'fp16'}" if trt else "onnx-cpu")
    if precision:
        target = dataclasses.replace(target, precision=precision)
    trt = trt or target.backend == "tensorrt"
    if target.precision == "fp16" and target.backend == "onnxruntime":
        raise ConfigError(f"target {target.name}: fp16 applies to TensorRT engines (--trt) and the torch-cuda-fp16 "
                          "runtime; the ONNX file is fp32")
    if trt:
        from mmdeploy.runtime.trt_files import tensorrt_reason

        reason = tensorrt_reason()
        if reason:
            raise MmdeployError(f"--trt: {reason}")
    bundle = load_bundle(run)  # verified: tampered weights, a pickle file or an edited model.json stop here
    out = bundle.export_dir
    onnx_path = out / ONNX_FILE
    exported = onnx or not onnx_is_current(bundle, onnx_path)
    if exported:
        export_onnx(bundle, onnx_path)
    inputs = parity_inputs(bundle, max(target.parity_batches))
    ort_target = target.backend == "onnxruntime"
    providers = usable_providers(target.providers if ort_target else ("CPUExecutionProvider",))
    reports = {"onnxruntime": check_parity(bundle, _ort_logits(onnx_path, providers), target.parity_batches,
                                           target.tolerance if ort_target else 1e-4,
                                           f"onnxruntime ({', '.join(providers)})", inputs)}
    summary: dict[str, Any] = {"run": str(bundle.path), "target": target.name, "onnx": str(onnx_path),
                               "onnx_exported": exported}
    if target.backend == "torch" and target.device == "cuda":
        reports["torch"] = _torch_cuda_parity(bundle, target, inputs)
    _record(reports, out, bundle.meta)
    _fail_if_off(reports["onnxruntime"], out, onnx_path)
    if "torch" in reports:
        _fail_if_off(reports["torch"], out)
    if target.cpu_engine:  # only from an ONNX file that passed
        from mmdeploy.cpu_engines import export_engine

        made = export_engine(bundle, target, onnx_path, calibration=calibration, seconds=timing_seconds)
        reports[made["engine"]] = made["report"]
        summary.update(cpu_engine=made["engine"], timing=made["timing"], engine_files=made["files"])
    if trt:  # only from an ONNX file that passed
        from mmdeploy.runtime.trt_backend import TensorRTPredictor
        from mmdeploy.tensorrt_engine import ensure_engine

        engine, built = ensure_engine(onnx_path, out, target.precision, target.batch, target.fp32_layers)
        predictor = TensorRTPredictor(engine, bundle.classes, bundle.spec, max_batch=target.batch["max"])
        reports["tensorrt"] = check_parity(bundle, predictor.logits, target.parity_batches, target.tolerance,
                                           predictor.backend, inputs)
        summary.update(engine=str(engine), engine_built=built)
        _record(reports, out, bundle.meta)
        _fail_if_off(reports["tensorrt"], out, engine)
    summary["parity"] = reports
    if bento:
        summary["bento"] = save_to_bentoml(bundle, onnx_path)
    return summary


def save_to_bentoml(bundle: Bundle, onnx_path: Path) -> str:
    """Copy the bundle (model.json, weights, export/model.onnx, parity.json, and the files of the CPU engines
    model.json records: int8 files, OpenVINO caches) into the BentoML model store as `av-classifier`; ref.path
    is itself a bundle folder, so the service loads it with load_predictor (`auto` as measured at export).
    Metadata: classes (list), spec and arch (JSON strings: BentoML metadata takes no nulls), spec_digest."""
    import bentoml

    labels = {"format": FORMAT, "spec_digest": bundle.spec.digest(), "num_classes": str(len(bundle.classes))}
    metadata = {"classes": list(bundle.classes), "spec": bundle.spec.to_json(), "spec_digest": bundle.spec.digest(),
                "arch": json.dumps(bundle.arch, sort_keys=True), "source_run": str(Path(bundle.path).resolve())}
    with bentoml.models.create(name=BENTO_MODEL, labels=labels, metadata=metadata) as ref:
        root = Path(ref.path)
        for name in (META, WEIGHTS):
            shutil.copy2(bundle.path / name, root / name)
        (root / "export").mkdir(exist_ok=True)
        shutil.copy2(onnx_path, root / "export" / ONNX_FILE)
        if (onnx_path.parent / PARITY_FILE).is_file():
            shutil.copy2(onnx_path.parent / PARITY_FILE, root / "export" / PARITY_FILE)
        from mmdeploy.runtime.cpu_record import files

        for rel in files(bundle.meta):  # digested in model.json: the store entry verifies them like the run
            if (bundle.path / rel).is_file():
                shutil.copy2(bundle.path / rel, root / rel)
    return str(ref.tag)
