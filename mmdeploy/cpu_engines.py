"""The CPU engines at export (`mmdeploy export RUN --target openvino-int8 | openvino-bf16 | onnx-int8 |
openvino-fp32`): make the engine, gate it against fp32, cache it, time it, record it.

    1. make      int8: calibrate on the bundle's training windows and quantize (mmdeploy/quantize.py);
                 bf16 / fp32: OpenVINO compiles RUN/export/model.onnx with that precision hint
    2. gate      on held-out windows (test split, else val; random inputs without a manifest, said so): max-abs
                 and max-rel logit difference vs ONNX Runtime fp32, fused top-1 agreement, and the accuracy delta
                 in points when the windows have labels. Fails when the drop exceeds gate.max_drop, agreement is
                 below gate.min_agreement, or max-abs exceeds gate.max_abs (when set). An int8 engine that fails
                 is made again with more layers kept in fp32 (quantize.fp32_fallbacks) before export gives up:
                 then the file is renamed *.rejected, the record is dropped, and the error is one line.
    3. cache     OpenVINO: the compiled model (dynamic batch, and static batch 1) exported to
                 RUN/export/<cache_name> (named by CPU, OpenVINO release, precision, shape, source digest)
    4. time      this engine, every other recorded one and ONNX Runtime fp32, interleaved, at batch 1 and the
                 target's opt batch, on this machine's cores
    5. record    files and digests in model.json export.engines, timings in export.timing (what `auto` ranks
                 by: runtime/cpu_record.py), every number in parity.json
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmdeploy.bundle import Bundle, record_engine
from mmdeploy.errors import MmdeployError
from mmdeploy.quantize import (Windows, calibration_windows, fp32_fallbacks, held_out_windows, int8_metadata, prepare,
                               remove, scratch)
from mmdeploy.runtime.base import OUTPUT_NAMES, OUTPUTS
from mmdeploy.runtime.cpu_record import ENGINES, REFERENCE, engine_for, recorded
from mmdeploy.settings import cpu_count
from mmdeploy.targets import Target

PARITY_FILE = "parity.json"
Logits = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]


# ---- runners ---------------------------------------------------------------------------------------------
def ort_runner(path: Path, threads: int) -> Logits:
    from mmdeploy.runtime.ort_backend import make_session

    session = make_session(path, ("CPUExecutionProvider",), threads)
    return lambda a, v: dict(zip(OUTPUTS, session.run(list(OUTPUT_NAMES), {"audio": a, "video": v})))


def ov_runner(compiled) -> Logits:
    request = compiled.create_infer_request()

    def run(a: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
        out = request.infer({"audio": a, "video": v})
        return {o: np.array(out[n], dtype=np.float32, copy=True) for o, n in zip(OUTPUTS, OUTPUT_NAMES)}

    return run


# ---- the gate --------------------------------------------------------------------------------------------
class Reference:
    """fp32 logits of the held-out windows, computed on the first pass and reused by every later attempt
    (the inputs too, when small; otherwise they are made again, in the same order)."""

    def __init__(self, windows: Windows, fp32: Logits):
        self.windows, self.fp32 = windows, fp32
        self.stored: list[tuple[Any, Any, dict[str, np.ndarray], Any]] | None = None

    def pairs(self, engine: Logits):
        """(fp32 logits, engine logits, labels) per chunk."""
        if self.stored is None:
            self.stored = []
            for a, v, labels in self.windows.chunks():
                ref = self.fp32(a, v)
                keep = _small(a, v)
                self.stored.append((a if keep else None, v if keep else None, ref, labels))
                yield ref, engine(a, v), labels
            return
        fresh = self.windows.chunks() if any(a is None for a, *_ in self.stored) else None
        for a, v, ref, labels in self.stored:
            if fresh is not None:
                again = next(fresh)
                a, v = (a, v) if a is not None else again[:2]
            yield ref, engine(a, v), labels


def _small(a: np.ndarray, v: np.ndarray) -> bool:
    return a.nbytes + v.nbytes <= (8 << 20)  # keep inputs of small models in memory (tests, synth)


def gate(reference: Reference, engine: Logits, limits: dict[str, Any]) -> dict[str, Any]:
    """The gate's numbers for `engine` against fp32 and whether they pass `limits` (Target.gate)."""
    max_abs, max_ref, agree, n = 0.0, 0.0, 0, 0
    correct_ref = correct = labelled = 0
    for ref, got, labels in reference.pairs(engine):
        for o in OUTPUTS:
            max_abs = max(max_abs, float(np.max(np.abs(ref[o] - got[o]))))
            max_ref = max(max_ref, float(np.max(np.abs(ref[o]))))
        r, g = ref["fused"].argmax(1), got["fused"].argmax(1)
        agree += int((r == g).sum())
        n += len(r)
        if labels is not None:
            y = np.asarray(labels)
            correct_ref += int((r == y).sum())
            correct += int((g == y).sum())
            labelled += len(y)
    if n == 0:
        raise MmdeployError("accuracy gate: no held-out window could be decoded; check the bundle's manifest")
    report: dict[str, Any] = {"windows": n, "max_abs_diff": max_abs, "max_rel_diff": max_abs / max(max_ref, 1e-12),
                              "top1_agreement": agree / n}
    if labelled:
        report.update(accuracy_fp32=100.0 * correct_ref / labelled, accuracy=100.0 * correct / labelled,
                      accuracy_delta_points=100.0 * (correct - correct_ref) / labelled)
    else:
        report["accuracy_delta_points"] = None
    failures = []
    if labelled and -report["accuracy_delta_points"] > limits["max_drop"]:
        failures.append(f"accuracy {report['accuracy']:.2f} % is {-report['accuracy_delta_points']:.2f} points below "
                        f"fp32 ({report['accuracy_fp32']:.2f} %), more than gate.max_drop {limits['max_drop']:g}")
    if report["top1_agreement"] < limits["min_agreement"]:
        failures.append(f"top-1 agreement with fp32 {100 * report['top1_agreement']:.1f} % is below "
                        f"gate.min_agreement {100 * limits['min_agreement']:g} %")
    if limits.get("max_abs") is not None and max_abs > limits["max_abs"]:
        failures.append(f"max-abs logit difference {max_abs:.3g} exceeds gate.max_abs {limits['max_abs']:g}")
    report.update(ok=not failures, failures=failures)
    return report


# ---- timing ----------------------------------------------------------------------------------------------
def time_engines(runners: dict[str, Logits], spec, batches: list[int], seconds: float = 1.0,
                 block: int = 3) -> dict[str, dict[str, float]]:
    """Median ms per call of every runner at each batch size. Rounds of blocks: in each round every runner
    makes one untimed call (another runtime's threads may still be spinning) and `block` timed ones, so a
    noisy machine slows them alike; about `seconds` per runner and batch, at least two rounds."""
    out: dict[str, dict[str, float]] = {name: {} for name in runners}
    for b in batches:
        a, v = _random(spec, b)
        times: dict[str, list[float]] = {name: [] for name in runners}
        start, rounds = time.perf_counter(), 0
        while rounds < 2 or (time.perf_counter() - start < seconds * len(runners) and rounds < 100):
            for name, run in runners.items():
                run(a, v)
                for _ in range(block):
                    t = time.perf_counter()
                    run(a, v)
                    times[name].append((time.perf_counter() - t) * 1000)
            rounds += 1
        for name, ms in times.items():
            out[name][str(b)] = round(statistics.median(ms), 3)
    return out


def _random(spec, b: int):
    rng = np.random.default_rng(b)
    return (rng.standard_normal((b, 1, *spec.spectrogram_shape), dtype=np.float32),
            rng.standard_normal((b, *spec.frames_shape), dtype=np.float32))


# ---- the flow --------------------------------------------------------------------------------------------
def export_engine(bundle: Bundle, target: Target, onnx_path: Path, calibration: int | None = None,
                  seconds: float = 1.0) -> dict[str, Any]:
    """Make, gate, cache, time and record the CPU engine of `target` from the bundle's current model.onnx
    (already exported and parity-checked). Returns {"engine", "report", "timing", files}; raises
    MmdeployError (one line, the CLI's exit 2) when the gate fails. `calibration` overrides the number of
    calibration windows (target.calibration.windows)."""
    from mmdeploy.environment import cpu_info
    from mmdeploy.runtime.trt_files import file_sha256

    name = engine_for(target.backend, target.precision)
    engine = ENGINES[name]
    if engine.runtime == "openvino":
        from mmdeploy.runtime.openvino_backend import openvino_reason

        reason = openvino_reason()
        if reason:
            raise MmdeployError(f"--target {target.name}: {reason}")
    out, threads, cpu = onnx_path.parent, cpu_count(), cpu_info()
    onnx_sha = file_sha256(onnx_path)
    old = recorded(bundle.meta, name) or {}
    record_engine(bundle, name, None)  # a failed export leaves no record behind: nothing loads a rejected engine
    held = held_out_windows(bundle, target.gate["windows"], target.calibration["seed"])
    reference = Reference(held, ort_runner(onnx_path, threads))
    report: dict[str, Any] = {"backend": name, "precision": engine.precision, "target": target.name,
                              "reference": f"{REFERENCE} fp32 ({onnx_path.name})", "inputs": held.source,
                              "tolerance": dict(target.gate)}
    if engine.precision == "int8":
        source, runner, compiled, found = _int8(bundle, target, name, onnx_path, onnx_sha, reference, calibration,
                                                threads, report)
    else:
        from mmdeploy.runtime.openvino_backend import compile_file

        source = onnx_path
        compiled = compile_file(onnx_path, engine.precision, threads)
        runner = ov_runner(compiled)
        found = gate(reference, runner, target.gate)
        report.update(found)
    report["failed_windows"] = held.failed
    if not found["ok"]:
        _write_parity(out, {name: report}, bundle.meta)
        note = ""
        if source != onnx_path and source.is_file():
            source.replace(source.with_name(source.name + ".rejected"))
            note = f"; {source.name} renamed to {source.name}.rejected"
        kept = f" (with {report['fp32_layers']} kept in fp32)" if "fp32_layers" in report else ""
        raise MmdeployError(f"{out}: {name} failed the accuracy gate{kept}: {'; '.join(found['failures'])}{note}; "
                            f"see {out / PARITY_FILE}")
    source_sha = file_sha256(source)
    rel = lambda p: p.relative_to(bundle.path).as_posix()  # noqa: E731
    entry: dict[str, Any] = {"precision": engine.precision, "runtime": engine.runtime, "target": target.name,
                             "onnx_sha256": onnx_sha, "source": rel(source), "source_sha256": source_sha,
                             "files": {rel(source): source_sha} if source != onnx_path else {},
                             "gate": {k: report[k] for k in ("windows", "max_abs_diff", "max_rel_diff",
                                                             "top1_agreement", "accuracy_delta_points")},
                             "made": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if engine.runtime == "openvino":
        from mmdeploy.runtime.openvino_backend import cache_name, version, write_blob

        from mmdeploy.runtime.openvino_backend import compile_file

        key = str(cpu["key"])
        entry["openvino"] = version()
        for field, model, batch in (("caches", compiled, None),
                                    ("caches_b1", compile_file(source, engine.precision, threads, 1), 1)):
            cache = out / cache_name(key, version(), engine.precision, source_sha, batch)
            data = write_blob(model, cache)
            caches = {k: v for k, v in (old.get(field) or {}).items()  # other machines' caches of the same source
                      if old.get("source_sha256") == source_sha and k != key and (bundle.path / v).is_file()}
            caches[key] = rel(cache)
            entry[field] = caches
            entry["files"].update({v: old["files"][v] for v in caches.values() if v in (old.get("files") or {})})
            entry["files"][rel(cache)] = _sha(data)
        report["cache"] = entry["caches"][key]
    record_engine(bundle, name, entry)
    timing = time_recorded(bundle, target, threads, seconds)
    record_engine(bundle, name, entry, timing=timing)
    _write_parity(out, {name: report, "timing": timing}, bundle.meta)
    return {"engine": name, "report": report, "timing": timing, "files": sorted(entry["files"])}


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _int8(bundle: Bundle, target: Target, name: str, onnx_path: Path, onnx_sha: str, reference: Reference,
          calibration: int | None, threads: int, report: dict[str, Any]):
    """Calibrate and quantize with each quantizer the target asks for (auto: every one installed), each made
    again with more layers in fp32 while the gate fails; of those that pass, the one timed fastest at batch 1
    (side by side) is kept. Returns (int8 file, runner, compiled OpenVINO model or None, its gate result); the
    report gets every attempt and the quantizers' timings."""
    from mmdeploy.quantize import HOW, quantize, quantizers

    engine = ENGINES[name]
    count = calibration or target.calibration["windows"]
    windows = calibration_windows(bundle, count, target.calibration["seed"])
    dst = onnx_path.parent / str(engine.int8_file)
    tmp = scratch(onnx_path.parent)
    attempts: list[dict[str, Any]] = []
    made: dict[str, dict[str, Any]] = {}
    try:
        prepared = prepare(onnx_path, tmp / "prepared.onnx")
        steps = fp32_fallbacks(prepared)
        for quantizer in quantizers(target.calibration["quantizer"]):
            path = tmp / f"{quantizer}.onnx"
            for what, nodes in steps:
                started = time.perf_counter()
                quantize(quantizer, prepared, path, windows,
                         int8_metadata(onnx_path, onnx_sha, {**HOW[quantizer], "fp32": what}), exclude=nodes)
                runner, compiled = _runner(engine.runtime, path, threads)
                found = gate(reference, runner, target.gate)
                attempts.append({"quantizer": quantizer, "fp32_layers": what, "fp32_nodes": len(nodes),
                                 "seconds": round(time.perf_counter() - started, 1),
                                 **{k: found[k] for k in ("ok", "top1_agreement", "accuracy_delta_points",
                                                          "max_abs_diff")}})
                made[quantizer] = {"path": path, "runner": runner, "compiled": compiled, "found": found,
                                   "fp32_layers": what, "fp32_nodes": nodes}
                if found["ok"]:
                    break
        passing = [q for q, m in made.items() if m["found"]["ok"]]
        if len(passing) > 1:  # measure, side by side, which quantizer's engine runs faster here
            ms = time_engines({q: made[q]["runner"] for q in passing}, bundle.spec, [1], seconds=1.0)
            report["quantizer_ms"] = {q: v["1"] for q, v in ms.items()}
            passing.sort(key=lambda q: ms[q]["1"])
        chosen = passing[0] if passing else list(made)[-1]
        best = made[chosen]
        os.replace(best["path"], dst)
    finally:
        remove(tmp)
    report.update(best["found"], quantizer=chosen, fp32_layers=best["fp32_layers"], fp32_nodes=best["fp32_nodes"])
    report["calibration"] = {**windows.source, "failed": windows.failed, **HOW[chosen]}
    report["attempts"] = attempts
    return dst, best["runner"], best["compiled"], best["found"]


def _runner(runtime: str, path: Path, threads: int) -> tuple[Logits, Any]:
    """(logits function, compiled OpenVINO model or None) of an int8 file on `runtime`."""
    if runtime == "openvino":
        from mmdeploy.runtime.openvino_backend import compile_file

        compiled = compile_file(path, "int8", threads)
        return ov_runner(compiled), compiled
    return ort_runner(path, threads), None


def time_recorded(bundle: Bundle, target: Target, threads: int, seconds: float = 1.0) -> dict[str, Any]:
    """Time ONNX Runtime fp32 and every CPU engine the bundle can run here (recorded ones, and OpenVINO fp32
    when OpenVINO is installed) through the runtime's own Predictors, at batch 1 and the target's opt batch."""
    import onnxruntime

    from mmdeploy.environment import cpu_info
    from mmdeploy.runtime import backend_reasons, load_predictor

    names = [REFERENCE, *[n for n in ENGINES if backend_reasons(bundle.path, (n,))[n] is None]]
    predictors = {n: load_predictor(bundle.path, n, threads=threads) for n in names}
    batches = sorted({1, int(target.batch["opt"])})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    ms = time_engines({n: p.logits for n, p in predictors.items()}, bundle.spec, batches, seconds)
    cpu = cpu_info()
    versions = {"onnxruntime": onnxruntime.__version__}
    if any(ENGINES[n].runtime == "openvino" for n in names if n in ENGINES):
        from mmdeploy.runtime.openvino_backend import version

        versions["openvino"] = version()
    return {"cpu": cpu["key"], "cpu_model": cpu["model"], "features": cpu["features"], "threads": threads,
            "batches": batches, "ms": ms, "load_average": load, "versions": versions,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _write_parity(out: Path, reports: dict[str, Any], meta: dict) -> None:
    """Merge `reports` into parity.json: the fp32 report and every still-recorded engine's report stay."""
    path = out / PARITY_FILE
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        old = {}
    kept = {k: v for k, v in old.items() if k not in ENGINES or recorded(meta, k) is not None}
    tmp = path.with_name(PARITY_FILE + ".tmp")
    tmp.write_text(json.dumps({**kept, **reports}, indent=2) + "\n")
    os.replace(tmp, path)


def keep_reports(out: Path, meta: dict) -> dict[str, Any]:
    """The engine reports (and timing) of parity.json that are still recorded, for export to write back."""
    path = out / PARITY_FILE
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    kept = {k: v for k, v in old.items() if k in ENGINES and recorded(meta, k) is not None}
    if kept and "timing" in old:
        kept["timing"] = old["timing"]
    return kept
