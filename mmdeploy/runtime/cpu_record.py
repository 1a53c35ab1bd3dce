"""The CPU engines `mmdeploy export` made, gated and timed, as model.json records them, and what `auto` reads.

    model.json export.engines[NAME] = {"precision": "int8", "onnx_sha256": <model.onnx it was made from>,
                                       "source": "export/model.openvino-int8.onnx",   (int8: the QDQ file)
                                       "files": {"export/...": sha256, ...},           (source + caches)
                                       "caches": {"<cpu key>": "export/<cache_name>"}, (OpenVINO: dynamic
                                       "caches_b1": {...},                               batch; static batch 1)
                                       "gate": {...the accuracy gate's numbers...}}
    model.json export.timing = {"cpu": <cpu key>, "cpu_model": ..., "batches": [1, 8], "threads": 2,
                                "ms": {"onnxruntime-cpu": {"1": 52.1, "8": 390.0}, "openvino-int8": {...}}}

An engine is recorded only after it passed the gate, so being recorded is being verified. Its files are
checked against their digests before anything loads them: an edited int8 file or cache is refused
(BundleError, one line), never rebuilt from. A cache for another CPU or OpenVINO release has another name and
is simply not looked for (the engine compiles from its verified source file instead).

`auto` (runtime.select_backend) puts a recorded engine ahead of onnxruntime-cpu only when the timing was made
on this CPU (same model and int8/bf16 features) and the engine was faster than onnxruntime-cpu at every timed
batch size; the fastest at batch 1 first. Never a slower one, never a guess (int8 is slower than fp32 on some
CPUs). Imports neither torch nor openvino at import time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdeploy.errors import BundleError

REFERENCE = "onnxruntime-cpu"  # what every CPU engine is timed against


@dataclass(frozen=True)
class Engine:
    runtime: str  # onnxruntime | openvino
    precision: str  # fp32 | bf16 | int8
    target: str  # the deploy target that makes it (export/NAME.yaml)
    gated: bool = True  # needs a record made by `mmdeploy export --target TARGET` (fp32 OpenVINO does not)

    @property
    def int8_file(self) -> str | None:
        return None if self.precision != "int8" else f"model.{self.runtime}-int8.onnx"


ENGINES: dict[str, Engine] = {
    "openvino-int8": Engine("openvino", "int8", "openvino-int8"),
    "openvino-bf16": Engine("openvino", "bf16", "openvino-bf16"),
    "onnxruntime-int8": Engine("onnxruntime", "int8", "onnx-int8"),
    "openvino-cpu": Engine("openvino", "fp32", "openvino-fp32", gated=False),
}


def engine_for(runtime: str, precision: str) -> str:
    """The registry name of the CPU engine a target (backend, precision) makes."""
    for name, e in ENGINES.items():
        if e.runtime == runtime and e.precision == precision:
            return name
    raise KeyError(f"no CPU engine for {runtime} {precision}")


def _export(meta: dict) -> dict:
    export = meta.get("export")
    return export if isinstance(export, dict) else {}


def recorded(meta: dict, name: str) -> dict | None:
    """model.json's record of engine `name`, when it was made from the ONNX file model.json records."""
    entry = (_export(meta).get("engines") or {}).get(name)
    if not isinstance(entry, dict) or entry.get("onnx_sha256") != _export(meta).get("onnx_sha256"):
        return None
    return entry


def artifact_reason(name: str, run: Path) -> str | None:
    """Why `run` lacks what engine `name` runs (model.onnx itself is checked by the registry's "onnx" need)."""
    from mmdeploy.bundle import read_meta

    engine = ENGINES[name]
    if not engine.gated or not (run / "model.json").is_file():
        return None
    meta = read_meta(run)
    entry = (_export(meta).get("engines") or {}).get(name)
    fix = f"run `mmdeploy export {run} --target {engine.target}`"
    if not isinstance(entry, dict):
        return f"model.json records no {name} engine (made and accuracy-gated by export); {fix}"
    if entry.get("onnx_sha256") != _export(meta).get("onnx_sha256"):
        return f"the {name} engine was made from another model.onnx than the one model.json records; {fix}"
    source = entry.get("source")
    if isinstance(source, str) and not (run / source).is_file():
        return f"{run / source} missing; {fix}"
    return None


def _checked_bytes(run: Path, rel: str, entry: dict, name: str) -> bytes:
    """The bytes of RUN/rel after checking them against the digest the engine's record keeps."""
    path = run / rel
    want = (entry.get("files") or {}).get(rel)
    fix = f"re-export with `mmdeploy export {run} --target {ENGINES[name].target}`"
    if not isinstance(want, str):
        raise BundleError(f"{path}: model.json records no digest for this {name} file; {fix}")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != want:
        raise BundleError(f"{path}: sha256 {digest[:12]}... differs from the digest in model.json "
                          f"({want[:12]}...): the file was modified; {fix}")
    return data


def verified_source(run: Path, meta: dict, name: str) -> tuple[Path, str]:
    """(the ONNX file engine `name` runs, its sha256), checked: the int8 file against its recorded digest and
    its metadata against model.json; model.onnx (fp32, bf16) by verify_onnx against export.onnx_sha256."""
    from mmdeploy.runtime.ort_backend import verify_onnx

    engine = ENGINES[name]
    onnx_path = run / "export" / "model.onnx"
    verify_onnx(onnx_path, meta)
    if engine.int8_file is None:
        return onnx_path, _export(meta)["onnx_sha256"]
    entry = recorded(meta, name) or {}
    rel = f"export/{engine.int8_file}"
    digest = hashlib.sha256(_checked_bytes(run, rel, entry, name)).hexdigest()
    verify_onnx(run / rel, meta, recorded=digest,
                fix=f"re-export with `mmdeploy export {run} --target {engine.target}`")
    return run / rel, digest


def verified_cache(run: Path, meta: dict, name: str, cpu_key: str,
                   batch: int | None = None) -> tuple[Path, bytes] | None:
    """The OpenVINO compiled-model cache model.json records for this CPU, OpenVINO release and source file,
    with its bytes checked against the recorded digest (BundleError if edited); None when there is none
    (another CPU or release: the engine compiles from its verified source). `batch` 1: the static batch-1 one."""
    from mmdeploy.runtime.openvino_backend import cache_name, version

    entry = recorded(meta, name)
    if entry is None:
        return None
    source_sha = entry.get("source_sha256") or _export(meta)["onnx_sha256"]
    rel = f"export/{cache_name(cpu_key, version(), ENGINES[name].precision, source_sha, batch)}"
    listed = (entry.get("caches") or {}).values() if batch is None else (entry.get("caches_b1") or {}).values()
    if rel not in listed or not (run / rel).is_file():
        return None
    return run / rel, _checked_bytes(run, rel, entry, name)


def files(meta: dict) -> list[str]:
    """Every file (relative to RUN) the recorded CPU engines use: what a copy of the bundle must carry."""
    out: list[str] = []
    for name in ENGINES:
        entry = recorded(meta, name)
        out += [rel for rel in (entry or {}).get("files", {}) if rel not in out]
    return out


def rank(meta: dict, cpu_key: str, usable: dict[str, str | None]) -> tuple[list[str], dict[str, str], str]:
    """(CPU engines faster than onnxruntime-cpu here, fastest at batch 1 first; {engine: why not}; why the
    first). `usable`: {engine: None or the reason it cannot run here}."""
    timing = _export(meta).get("timing")
    why_not: dict[str, str] = {}
    candidates = [n for n in ENGINES if recorded(meta, n) is not None or not ENGINES[n].gated]
    if not isinstance(timing, dict) or not isinstance(timing.get("ms"), dict):
        return [], {n: "not timed by `mmdeploy export` (no export.timing in model.json)"
                    for n in candidates if recorded(meta, n) is not None}, ""
    if timing.get("cpu") != cpu_key:
        return [], {n: f"timed on another CPU ({timing.get('cpu')}, this one is {cpu_key}); re-run "
                       f"`mmdeploy export RUN --target {ENGINES[n].target}` here"
                    for n in candidates if n in timing["ms"]}, ""
    ms = timing["ms"]
    ref = ms.get(REFERENCE) or {}
    faster = []
    for name in candidates:
        mine = ms.get(name)
        if not isinstance(mine, dict):
            continue
        if usable.get(name):
            why_not[name] = usable[name] or ""
            continue
        batches = [b for b in mine if b in ref]
        if not batches:
            continue
        slower = [b for b in batches if not float(mine[b]) < float(ref[b])]
        if slower:
            b = slower[0]
            why_not[name] = (f"timed slower than {REFERENCE} at batch {b} on this CPU ({float(mine[b]):.1f} ms vs "
                             f"{float(ref[b]):.1f} ms): not used by auto")
            continue
        faster.append(name)
    faster.sort(key=lambda n: float(ms[n].get("1", min(ms[n].values()))))
    why = ""
    if faster:
        best = ms[faster[0]]
        parts = [f"batch {b} {float(best[b]):.1f} ms vs {float(ref[b]):.1f} ms ({float(ref[b]) / float(best[b]):.1f}x)"
                 for b in sorted(best, key=int) if b in ref]
        why = (f"{faster[0]}: the fastest accuracy-gated CPU engine timed by export on this CPU "
               f"({timing.get('cpu_model', cpu_key)}): " + ", ".join(parts) + f" against {REFERENCE}")
    return faster, why_not, why
