"""CPU engines (OpenVINO fp32/bf16/int8, ONNX Runtime int8): made by export, accuracy-gated, digested in
model.json, refused when edited, ranked by the export's timing record; the CPU features doctor names."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmdeploy.errors import BackendUnavailable, BundleError, ConfigError, MmdeployError
from tests.test_export import _cli, _main

pytest.importorskip("openvino", reason="the openvino extra is not installed (make install installs it)")

ENGINES = ("onnxruntime-int8", "openvino-int8", "openvino-bf16", "openvino-cpu")
TARGETS = {"onnxruntime-int8": "onnx-int8", "openvino-int8": "openvino-int8", "openvino-bf16": "openvino-bf16",
           "openvino-cpu": "openvino-fp32"}


@pytest.fixture
def copy(tiny_cpu_engines, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_cpu_engines[0], out)
    return out


def meta(run: Path) -> dict:
    return json.loads((run / "model.json").read_text())


def write_meta(run: Path, value: dict) -> None:
    (run / "model.json").write_text(json.dumps(value, indent=2))


def make_fastest(run: Path, name: str) -> None:
    """Rewrite the timing record so that `name` was the fastest engine on this CPU (what a machine with VNNI /
    AMX measures at paper size; the tiny test model is faster on ONNX Runtime fp32)."""
    m = meta(run)
    ms = m["export"]["timing"]["ms"]
    for other in ms:
        ms[other] = {b: 10.0 for b in ms[other]}
    ms[name] = {b: 1.0 for b in ms[name]}
    write_meta(run, m)


def flip(path: Path, at: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    at = min(at, len(data) - 8)
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path.write_bytes(bytes(data))


# ---- export: files, gate numbers, calibration set, timing record ---------------------------------------------
def test_export_records_every_engine_with_digests_gate_and_timing(tiny_cpu_engines):
    run, made = tiny_cpu_engines
    m = meta(run)
    engines = m["export"]["engines"]
    assert sorted(engines) == sorted(ENGINES)
    for name, entry in engines.items():
        assert entry["onnx_sha256"] == m["export"]["onnx_sha256"]
        for rel, digest in entry["files"].items():  # every file it loads is digested
            assert hashlib.sha256((run / rel).read_bytes()).hexdigest() == digest
        if name.endswith("int8"):
            assert entry["source"] == f"export/model.{name}.onnx" and entry["source"] in entry["files"]
        if name.startswith("openvino"):
            (cache,), (single,) = entry["caches"].values(), entry["caches_b1"].values()
            assert cache.endswith(".ovblob") and f"_ov{entry['openvino']}_{entry['precision']}_" in cache
            assert f"_{entry['precision']}-b1_" in single and {cache, single} <= set(entry["files"])
    timing = m["export"]["timing"]
    assert timing["batches"] == [1, 8] and timing["threads"] >= 1 and timing["cpu"]
    assert set(timing["ms"]) == {"onnxruntime-cpu", *ENGINES}
    assert all(set(v) == {"1", "8"} and all(x > 0 for x in v.values()) for v in timing["ms"].values())


def test_parity_json_shows_the_gate_numbers_and_the_calibration_set(tiny_cpu_engines):
    run, made = tiny_cpu_engines
    parity = json.loads((run / "export" / "parity.json").read_text())
    assert parity["onnxruntime"]["ok"]  # the fp32 file's own report stays beside the engines'
    for name in ENGINES:
        rep = parity[name]
        assert rep["ok"] and rep["failures"] == [] and rep["windows"] == 128
        assert 0 <= rep["max_abs_diff"] and 0 <= rep["max_rel_diff"] and rep["top1_agreement"] >= 0.99
        assert rep["inputs"]["random"] is True and "no data manifest" in rep["inputs"]["note"]
        assert rep["accuracy_delta_points"] is None  # random inputs have no labels: said so, not invented
        assert rep["tolerance"] == {"max_drop": 1.0, "min_agreement": 0.99, "windows": 1000, "max_abs": None}
    for name in ("onnxruntime-int8", "openvino-int8"):
        cal = parity[name]["calibration"]
        assert cal["random"] is True and cal["count"] == 128 and cal["seed"] == 0
        assert cal["format"] == "QDQ" and cal["per_channel"] is True
        assert parity[name]["attempts"][0]["fp32_layers"] == "none"
    assert parity["openvino-cpu"]["max_abs_diff"] < 1e-4  # fp32 is fp32
    assert parity["timing"]["ms"].keys() == meta(run)["export"]["timing"]["ms"].keys()


def test_int8_file_carries_the_bundle_metadata(tiny_cpu_engines):
    from mmdeploy.runtime.ort_backend import read_onnx_metadata

    run, _ = tiny_cpu_engines
    fp32 = read_onnx_metadata(run / "export" / "model.onnx")
    spec, classes, props = read_onnx_metadata(run / "export" / "model.openvino-int8.onnx")
    assert (spec, classes) == fp32[:2] and props["mmdeploy.precision"] == "int8"
    assert props["mmdeploy.source_onnx_sha256"] == meta(run)["export"]["onnx_sha256"]
    assert props["mmdeploy.weights_sha256"] == fp32[2]["mmdeploy.weights_sha256"]


@pytest.mark.parametrize("name", ENGINES)
def test_every_cpu_engine_predicts_like_fp32(tiny_cpu_engines, name):
    from mmdeploy.export import example_inputs
    from mmdeploy.runtime import load_predictor

    run, _ = tiny_cpu_engines
    predictor, reference = load_predictor(run, name), load_predictor(run, "onnxruntime-cpu")
    assert predictor.backend == name
    audio, video = example_inputs(predictor.spec, 5, seed=11)
    got, want = predictor.predict(audio, video), reference.predict(audio, video)
    for key in ("fused", "audio", "video"):
        assert got[key].shape == (5, 4) and got[key].dtype == np.float32
        np.testing.assert_allclose(got[key].sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got[key], want[key], atol=1e-5 if name == "openvino-cpu" else 5e-2)
    one = predictor.predict(audio[:1], video[:1])  # dynamic batch: batch 1 and 5 from one compiled model
    np.testing.assert_allclose(one["fused"], got["fused"][:1], atol=1e-5)


def test_openvino_threads_are_the_cores_given_and_the_cache_is_used(tiny_cpu_engines):
    from mmdeploy.runtime import load_predictor
    from mmdeploy.settings import cpu_count

    run, _ = tiny_cpu_engines
    default = load_predictor(run, "openvino-int8")
    assert default.threads == cpu_count() and default.cache is not None and default.cache.suffix == ".ovblob"
    assert load_predictor(run, "openvino-bf16", threads=1).threads == 1


# ---- auto: the fastest verified engine, never a slower one ---------------------------------------------------
def test_auto_never_takes_an_engine_timed_slower_than_fp32(copy, cpu_only):
    from mmdeploy import runtime

    m = meta(copy)
    ms = m["export"]["timing"]["ms"]
    for name in ENGINES:
        ms[name] = {b: v * 2 + 1 for b, v in ms["onnxruntime-cpu"].items()}
    write_meta(copy, m)
    predictor = runtime.load_predictor(copy)
    assert predictor.backend == "onnxruntime-cpu"
    for name in ENGINES:
        assert "timed slower than onnxruntime-cpu at batch 1" in predictor.skipped[name]


@pytest.mark.parametrize("name", ["openvino-int8", "onnxruntime-int8", "openvino-bf16"])
def test_auto_takes_the_engine_the_record_timed_fastest_and_says_why(copy, cpu_only, name):
    from mmdeploy import runtime

    make_fastest(copy, name)
    predictor = runtime.load_predictor(copy)
    assert predictor.backend == name
    assert predictor.why.startswith(f"{name}: the fastest accuracy-gated CPU engine") and "10.0x" in predictor.why
    if name.startswith("openvino"):
        assert runtime.load_predictor(copy, "openvino").backend == name  # the family follows the record too


def test_cpu_only_names_every_cpu_engine():
    from mmdeploy import runtime
    from mmdeploy.runtime.cpu_record import ENGINES

    assert set(ENGINES) <= runtime.CPU_ONLY <= set(runtime.BACKENDS) | set(runtime.FAMILIES)


def test_classify_runs_a_clip_on_the_engine_auto_picks(copy, cpu_only, media_dir, monkeypatch, capsys):
    make_fastest(copy, "openvino-int8")
    code, out, err = _main(monkeypatch, capsys, "classify", str(media_dir / "cremad_1001_DFA_ANG_XX.flv"),
                           "--model", str(copy), "--json")
    result = json.loads(out.strip().splitlines()[-1])
    assert code in (0, None) and result["backend"] == "openvino-int8", err
    assert sum(result["probs"].values()) == pytest.approx(1.0, abs=1e-4)


def test_auto_ignores_a_timing_made_on_another_cpu(copy, cpu_only):
    from mmdeploy import runtime

    make_fastest(copy, "openvino-int8")
    m = meta(copy)
    m["export"]["timing"]["cpu"] = "some-other-cpu-00000000"
    write_meta(copy, m)
    predictor = runtime.load_predictor(copy)
    assert predictor.backend == "onnxruntime-cpu"
    assert "timed on another CPU (some-other-cpu-00000000" in predictor.skipped["openvino-int8"]


def test_doctor_names_cpu_features_and_what_auto_picks(copy, monkeypatch, capsys):
    from mmdeploy.environment import CPU_FEATURES

    make_fastest(copy, "openvino-int8")
    code, out, _ = _main(monkeypatch, capsys, "doctor", "--json", "--model", str(copy))
    info = json.loads(out)
    assert code == 0 and set(info["cpu"]["features"]) <= set(CPU_FEATURES) and info["cpu"]["model"]
    assert {"openvino-int8", "openvino-bf16", "onnxruntime-int8", "openvino-cpu"} <= set(info["backends"])
    assert info["versions"]["openvino"] and info["auto"]["backend"] in ("openvino-int8", "tensorrt",
                                                                          "onnxruntime-cuda", "torch-cuda-fp16")
    code, out, _ = _main(monkeypatch, capsys, "doctor", "--model", str(copy))
    assert code == 0 and "\ncpu       " in out and f"auto for {copy}:" in out


def test_cpu_info_reads_the_int8_and_bf16_flags():
    from mmdeploy.environment import cpu_info

    text = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"
            "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n")
    info = cpu_info(text)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert info["features"] == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"]
    assert info["key"].startswith("intel-r-xeon-r-platinum-8480-")
    older = cpu_info(text.replace(" amx_tile amx_int8 amx_bf16", ""))
    assert older["key"] != info["key"]  # another feature set: another cache name, another timing record


# ---- integrity: an edited int8 file or cache is refused, never rebuilt from ----------------------------------
@pytest.mark.parametrize("name", ["openvino-int8", "onnxruntime-int8"])
def test_edited_int8_file_is_refused(copy, name):
    from mmdeploy.runtime import load_predictor

    flip(copy / "export" / f"model.{name}.onnx")
    with pytest.raises(BundleError, match=rf"model\.{name}\.onnx: sha256 .* modified; re-export with"):
        load_predictor(copy, name)


def test_edited_int8_file_is_refused_by_auto_and_the_cli(copy, cpu_only, monkeypatch, capsys):
    from mmdeploy import runtime

    make_fastest(copy, "openvino-int8")
    flip(copy / "export" / "model.openvino-int8.onnx")
    with pytest.raises(BundleError, match="modified"):
        runtime.load_predictor(copy)
    code, out, err = _main(monkeypatch, capsys, "classify", "missing.mp4", "--model", str(copy))
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith(f"error: {copy / 'export' / 'model.openvino-int8.onnx'}: sha256")


def test_edited_cache_is_refused_and_a_missing_one_compiles_from_the_verified_source(copy):
    from mmdeploy.runtime import load_predictor

    (cache,) = meta(copy)["export"]["engines"]["openvino-bf16"]["caches"].values()
    flip(copy / cache, at=len((copy / cache).read_bytes()) // 2)
    with pytest.raises(BundleError, match=r"\.ovblob: sha256 .* modified"):
        load_predictor(copy, "openvino-bf16")
    (copy / cache).unlink()
    predictor = load_predictor(copy, "openvino-bf16")
    assert predictor.cache is None and predictor.source.endswith("model.onnx")


def test_int8_file_with_other_metadata_is_refused_even_with_a_matching_digest(copy):
    import onnx

    from mmdeploy.runtime import load_predictor

    path = copy / "export" / "model.onnxruntime-int8.onnx"
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "mmdeploy.classes":
            prop.value = json.dumps(["delta", "gamma", "beta", "alpha"])
    onnx.save_model(model, str(path))
    m = meta(copy)
    m["export"]["engines"]["onnxruntime-int8"]["files"][f"export/{path.name}"] = \
        hashlib.sha256(path.read_bytes()).hexdigest()
    write_meta(copy, m)
    with pytest.raises(BundleError, match=r"metadata mmdeploy\.classes differs from model\.json"):
        load_predictor(copy, "onnxruntime-int8")


def test_engines_made_from_another_onnx_are_not_used(copy):
    from mmdeploy.runtime import backend_reasons

    m = meta(copy)
    m["export"]["engines"]["openvino-int8"]["onnx_sha256"] = "0" * 64
    write_meta(copy, m)
    reason = backend_reasons(copy, ("openvino-int8",))["openvino-int8"]
    assert "made from another model.onnx" in reason and "--target openvino-int8" in reason
    with pytest.raises(BackendUnavailable, match="made from another model.onnx"):
        __import__("mmdeploy.runtime", fromlist=["x"]).load_predictor(copy, "openvino-int8")


def test_a_bundle_without_engines_says_how_to_make_them(tiny_exported):
    from mmdeploy.runtime import backend_reasons

    reasons = backend_reasons(tiny_exported[0], ENGINES)
    assert reasons["openvino-cpu"] is None  # fp32 OpenVINO needs only model.onnx
    for name in ("openvino-int8", "openvino-bf16", "onnxruntime-int8"):
        assert f"--target {TARGETS[name]}" in reasons[name] and "records no" in reasons[name]


def test_reexporting_the_same_onnx_keeps_the_engines_another_drops_them(copy):
    from mmdeploy.bundle import load_bundle, record_export

    bundle = load_bundle(copy, with_model=False)
    record_export(bundle, copy / "export" / "model.onnx")  # same bytes: same digest
    assert sorted(meta(copy)["export"]["engines"]) == sorted(ENGINES) and "timing" in meta(copy)["export"]
    flip(copy / "export" / "model.onnx", at=100000)
    record_export(load_bundle(copy, with_model=False), copy / "export" / "model.onnx")
    assert "engines" not in meta(copy)["export"] and "timing" not in meta(copy)["export"]


# ---- the gate fails cleanly ---------------------------------------------------------------------------------
def test_impossible_tolerance_fails_export_with_one_line_and_leaves_no_engine(copy, tmp_path, monkeypatch, capsys):
    target = tmp_path / "strict-int8.yaml"
    target.write_text("backend: openvino\nprecision: int8\ngate: {max_drop: 1.0, min_agreement: 0.99, "
                      "max_abs: 1.0e-9}\ncalibration: {windows: 16, seed: 0, quantizer: onnxruntime}\n")
    code, out, err = _main(monkeypatch, capsys, "export", str(copy), "--target", str(target))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "openvino-int8 failed the accuracy gate (with heads, fusion and encoder stems kept in fp32)" in lines[0]
    assert "exceeds gate.max_abs 1e-09" in lines[0] and "renamed to model.openvino-int8.onnx.rejected" in lines[0]
    assert not (copy / "export" / "model.openvino-int8.onnx").exists()
    assert "openvino-int8" not in meta(copy)["export"]["engines"]  # nothing left for auto to load
    report = json.loads((copy / "export" / "parity.json").read_text())["openvino-int8"]
    assert report["ok"] is False and [a["fp32_layers"] for a in report["attempts"]] == \
        ["none", "heads and fusion", "heads, fusion and encoder stems"]
    assert report["calibration"]["count"] == 16


def test_auto_quantizer_measures_nncf_and_onnxruntime_and_keeps_a_passing_one(copy, tmp_path):
    """Both quantizers run and are gated; the kept one passed (and, when both pass, was timed faster)."""
    pytest.importorskip("nncf", reason="the nncf extra is not installed (make install installs it)")
    from mmdeploy.export import export, load_target

    target = tmp_path / "both.yaml"
    target.write_text("backend: openvino\nprecision: int8\ngate: {max_drop: 1.0, min_agreement: 0.5}\n"
                      "calibration: {windows: 16, seed: 0, quantizer: auto}\n")
    report = export(copy, target=load_target(target), onnx=False, timing_seconds=0.02)["parity"]["openvino-int8"]
    tried = {a["quantizer"] for a in report["attempts"]}
    assert tried == {"nncf", "onnxruntime"} and report["ok"]
    passing = {a["quantizer"] for a in report["attempts"] if a["ok"]}
    assert report["quantizer"] in passing and report["calibration"]["quantizer"].startswith(
        "nncf" if report["quantizer"] == "nncf" else "onnxruntime")
    if len(passing) == 2:
        assert report["quantizer"] == min(report["quantizer_ms"], key=report["quantizer_ms"].get)


def test_gate_counts_accuracy_drop_and_agreement():
    from types import SimpleNamespace

    from mmdeploy.cpu_engines import Reference, gate
    from mmdeploy.quantize import Windows
    from mmdeploy.spec import preset

    spec = preset("synth").replace(frame_height=8, frame_width=8, n_mels=8)
    windows = Windows(SimpleNamespace(spec=spec), {"random": True}, count=100, seed=0)
    labels = np.arange(100) % 4

    def fp32(a, v):
        z = np.zeros((len(a), 4), np.float32)
        z[np.arange(len(a)), 0] = 1
        return {"fused": z, "audio": z, "video": z}

    reference = Reference(windows, fp32)
    same = gate(reference, fp32, {"max_drop": 1.0, "min_agreement": 0.99, "max_abs": None})
    assert same["ok"] and same["top1_agreement"] == 1.0 and same["max_abs_diff"] == 0.0

    def flips(a, v):  # every other window's top-1 moves to class 1
        out = fp32(a, v)
        out["fused"] = out["fused"].copy()
        out["fused"][::2] = [0, 2, 0, 0]
        return out

    worse = gate(reference, flips, {"max_drop": 1.0, "min_agreement": 0.99, "max_abs": None})
    assert not worse["ok"] and worse["top1_agreement"] == 0.5 and worse["max_abs_diff"] == 2.0
    assert any("below gate.min_agreement 99 %" in f for f in worse["failures"])
    labelled = Windows(SimpleNamespace(spec=spec), {}, count=0)  # labels [0, 0, 0, 1]: fp32 (always 0) gets 3
    labelled.chunks = lambda size=8: iter([(np.zeros((4, 1, 1, 1), np.float32), np.zeros((4, 1), np.float32),
                                            [0, 0, 0, 1])])
    rep = gate(Reference(labelled, fp32), flips, {"max_drop": 10.0, "min_agreement": 0.0, "max_abs": None})
    assert (rep["accuracy_fp32"], rep["accuracy"], rep["accuracy_delta_points"]) == (75.0, 25.0, -50.0)
    assert not rep["ok"] and "50.00 points below fp32 (75.00 %), more than gate.max_drop 10" in rep["failures"][0]


# ---- targets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data, message", [
    ({"backend": "onnxruntime", "precision": "bf16"}, "precision bf16: needs backend openvino"),
    ({"backend": "tensorrt", "device": "cuda", "precision": "int8"}, "precision int8: needs backend onnxruntime"),
    ({"backend": "openvino", "device": "cuda"}, "backend openvino: runs on device cpu"),
    ({"backend": "openvino", "gate": {"min_agreement": 1.5}}, "gate.min_agreement"),
    ({"backend": "openvino", "gate": {"max_drop": -1}}, "gate.max_drop"),
    ({"backend": "openvino", "calibration": {"windows": 0}}, "calibration.windows"),
    ({"backend": "openvino", "calibration": {"quantizer": "magic"}}, "calibration.quantizer: 'magic' is not one of"),
    ({"backend": "openvino", "gate": {"agreement": 0.9}}, "gate.agreement: unknown key"),
])
def test_bad_cpu_target_is_a_config_error(data, message):
    from mmdeploy.export import parse_target

    with pytest.raises(ConfigError, match=message):
        parse_target(data, name="t", where="export/t.yaml")


def test_openvino_target_without_openvino_names_the_extra(copy, monkeypatch):
    from mmdeploy.export import export, load_target
    from mmdeploy.runtime import openvino_backend

    monkeypatch.setattr(openvino_backend, "openvino_reason", lambda: "OpenVINO is not installed; faked")
    with pytest.raises(MmdeployError, match="--target openvino-bf16: OpenVINO is not installed; faked"):
        export(copy, target=load_target("openvino-bf16"), onnx=False)


# ---- the Bento carries the engines ----------------------------------------------------------------------------
@pytest.mark.slow
def test_bento_store_entry_carries_the_engine_files_and_runs_them(copy, tmp_path):
    home = tmp_path / "bentoml"
    result = _cli("export", str(copy), "--bento", "--json", env={"BENTOML_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    stored = home / "models" / "av-classifier" / json.loads(result.stdout)["bento"].split(":")[1]
    m = meta(copy)
    for entry in m["export"]["engines"].values():
        for rel in entry["files"]:
            assert (stored / rel).read_bytes() == (copy / rel).read_bytes()
    from mmdeploy.runtime import load_predictor

    assert load_predictor(stored, "openvino-int8").cache is not None  # verified in the store like in the run
    req = (Path(__file__).resolve().parents[1] / "serving" / "requirements.txt").read_text()
    assert "\nopenvino==" in req and "\nonnxruntime==" in req  # the Bento's locked set has both runtimes
