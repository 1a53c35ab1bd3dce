"""Bundles: reload, format versions, and integrity: every tampered bundle is refused with one line."""
import json
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from mmdeploy.bundle import load_bundle, save_bundle, verify_bundle
from mmdeploy.errors import BundleError


def test_reload_gives_identical_logits(tiny_bundle, tiny_spec):
    b = load_bundle(tiny_bundle)
    assert b.spec == tiny_spec and b.classes == ["alpha", "beta", "gamma", "delta"]
    torch.manual_seed(1)
    a = torch.randn(2, 1, *tiny_spec.spectrogram_shape)
    v = torch.randn(2, *tiny_spec.frames_shape)
    b2 = load_bundle(tiny_bundle)
    with torch.no_grad():
        assert torch.equal(b.model(a, v)["fused"], b2.model(a, v)["fused"])


def test_model_json_records_digest_and_trained_input_shapes(tiny_bundle, tiny_spec):
    import hashlib

    meta = json.loads((tiny_bundle / "model.json").read_text())
    data = (tiny_bundle / "model.safetensors").read_bytes()
    assert meta["weights"] == {"file": "model.safetensors", "sha256": hashlib.sha256(data).hexdigest(),
                               "bytes": len(data)}
    f, t = tiny_spec.spectrogram_shape
    assert meta["inputs"] == {"audio": [1, f, t], "video": [3, tiny_spec.frames, 32, 32]}


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run)
    return run


def flip_bytes(path, count=50):
    """XOR `count` bytes spread over the tensor data (after the safetensors header)."""
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    step = (len(data) - start) // count
    for i in range(count):
        data[start + i * step] ^= 0xFF
    path.write_bytes(bytes(data))


def edit_meta(run, **changes):
    meta = json.loads((run / "model.json").read_text())
    for key, value in changes.items():
        meta[key] = value(meta[key]) if callable(value) else value
    (run / "model.json").write_text(json.dumps(meta))


def refused(run, match):
    """Both load paths (torch model, and verify-only for ONNX Runtime / TensorRT) refuse with one line."""
    for load in (load_bundle, verify_bundle):
        with pytest.raises(BundleError, match=match) as info:
            load(run)
        assert "\n" not in str(info.value)
    return str(info.value)


def test_flipped_weight_bytes_are_refused(copy):
    flip_bytes(copy / "model.safetensors")
    message = refused(copy, r"model\.safetensors: sha256 .* differs from the digest in model\.json")
    assert "restore them or retrain" in message


@pytest.mark.parametrize("name, payload", [
    ("extra.pkl", pickle.dumps({"a": 1})),
    ("model.pt", b"anything"),                        # by name alone: torch.load would unpickle it
    ("export/weights.bin", pickle.dumps([1, 2, 3], protocol=4)),   # pickle bytes under another name
])
def test_pickle_files_in_the_bundle_are_refused(copy, name, payload):
    (copy / name).parent.mkdir(exist_ok=True)
    (copy / name).write_bytes(payload)
    message = refused(copy, "pickle file in a model bundle")
    assert message.startswith(str(copy / name)) and "remove it" in message


def test_torch_save_zip_under_a_neutral_name_is_refused(copy):
    torch.save({"w": torch.ones(2)}, copy / "extra.bin")  # zip with data.pkl inside
    refused(copy, "extra.bin: pickle file")
    (copy / "extra.bin").write_bytes(b"\x00\x01plain bytes")  # not pickle: accepted
    verify_bundle(copy)


def test_edited_spec_is_refused_by_the_trained_input_shapes(copy):
    # the edit: n_mels 128, 8 frames (convolutions would accept any shape)
    edit_meta(copy, spec=lambda s: {**s, "n_mels": 128, "frames": 8})
    refused(copy, r"spec gives audio input \[1, 128, \d+\] but the model was trained on \[1, 32, \d+\]")


def test_spec_and_inputs_edited_together_are_refused_by_the_seal(copy, tiny_spec):
    from mmdeploy.bundle import input_shapes

    spec = tiny_spec.replace(frames=8, frame_height=48)
    edit_meta(copy, spec=spec.to_dict(), inputs=input_shapes(spec))
    message = refused(copy, r"model\.json: spec .* differs from the spec the weights were trained with")
    assert "frames 8 vs 4" in message and "frame_height 48 vs 32" in message
    edit_meta(copy, spec=tiny_spec.replace(audio_mean=0.5).to_dict(), inputs=input_shapes(tiny_spec))
    refused(copy, "audio_mean 0.5 vs 0.0")  # same shapes, other normalisation: still refused


@pytest.mark.parametrize("classes", [["alpha", "beta", "gamma"], list("abcde"), ["alpha", "beta", "gamma", "omega"]])
def test_edited_class_list_is_refused(copy, classes):
    edit_meta(copy, classes=classes, num_classes=len(classes))
    refused(copy, r"model\.json: classes \((\d classes|class 3 'omega')\) differs from the classes the weights")


def test_edited_architecture_is_refused(copy):
    edit_meta(copy, arch=lambda a: {**a, "fusion": {"type": "mid", "hidden": 8}})
    refused(copy, r"model\.json: arch .* differs")


def test_weights_without_the_seal_are_refused(copy):
    """Weights swapped for a safetensors file from elsewhere, with model.json's digest updated to match."""
    import hashlib

    from safetensors.torch import save_file

    state = load_bundle(copy).model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(copy / "model.safetensors"))
    digest = hashlib.sha256((copy / "model.safetensors").read_bytes()).hexdigest()
    edit_meta(copy, weights=lambda w: {**w, "sha256": digest})
    refused(copy, "header records no mmdeploy.classes")


def test_refuses_other_format_version(copy):
    edit_meta(copy, format_version=99)
    with pytest.raises(BundleError, match="version 99"):
        load_bundle(copy)


def test_format_1_is_refused_and_reseal_converts_trusted_weights(copy, tiny_spec):
    """A version-1 bundle (no digest) is refused with the command that re-saves it; after reseal it
    loads and answers exactly as before."""
    from safetensors.torch import save_file

    before = load_bundle(copy)
    save_file({k: v.contiguous() for k, v in before.model.state_dict().items()}, str(copy / "model.safetensors"))
    meta = json.loads((copy / "model.json").read_text())
    for key in ("weights", "inputs"):
        meta.pop(key)
    meta["format_version"] = 1
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"version 1 records no weights digest.*`mmdeploy bundle reseal "):
        load_bundle(copy)
    result = subprocess.run([sys.executable, "-m", "mmdeploy", "bundle", "reseal", str(copy)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"resealed {copy}")
    verified = subprocess.run([sys.executable, "-m", "mmdeploy", "bundle", "verify", str(copy)], capture_output=True,
                              text=True, timeout=120)
    assert verified.returncode == 0 and verified.stdout.startswith(f"ok {copy}: sha256 "), verified.stderr
    after = load_bundle(copy)
    assert after.meta["format_version"] == 2 and after.meta["metrics"] == before.meta["metrics"]
    a, v = torch.randn(2, 1, *tiny_spec.spectrogram_shape), torch.randn(2, *tiny_spec.frames_shape)
    with torch.no_grad():
        assert torch.equal(after.model(a, v)["fused"], before.model(a, v)["fused"])


def test_refuses_mismatched_tensors(tmp_path):
    """Weights saved for another architecture under a model.json that (consistently) claims TINY_ARCH."""
    import hashlib

    from tests.conftest import TINY_ARCH
    from mmdeploy.models import build_model
    from mmdeploy.spec import preset

    wide = {**TINY_ARCH, "audio": {"type": "resnet", "width": 16, "layers": [1, 1, 1, 1]}}
    model = build_model(wide, 4)
    model.arch = TINY_ARCH  # sealed and recorded as TINY_ARCH: only the tensor shapes tell
    save_bundle(tmp_path, model, list("abcd"), preset("synth"))
    assert json.loads((tmp_path / "model.json").read_text())["weights"]["sha256"] == \
        hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    with pytest.raises(BundleError, match="shape"):
        load_bundle(tmp_path)


def test_missing_bundle_says_how_to_make_one(tmp_path):
    with pytest.raises(BundleError, match="mmdeploy train"):
        load_bundle(tmp_path / "nope")


def test_verify_command_exits_2_with_one_line(copy):
    flip_bytes(copy / "model.safetensors")
    result = subprocess.run([sys.executable, "-m", "mmdeploy", "bundle", "verify", str(copy)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {copy / 'model.safetensors'}: sha256")
