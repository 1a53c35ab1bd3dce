import json

import pytest
import torch

from mmdeploy.bundle import load_bundle, save_bundle
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


def test_refuses_other_format_version(tiny_bundle, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes((tiny_bundle / "model.safetensors").read_bytes())
    meta = json.loads((tiny_bundle / "model.json").read_text())
    meta["format_version"] = 99
    (run / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="version 99"):
        load_bundle(run)


def test_refuses_mismatched_tensors(tiny_bundle, tmp_path):
    from tests.conftest import TINY_ARCH
    from mmdeploy.models import build_model
    from mmdeploy.spec import preset

    wide = {**TINY_ARCH, "audio": {"type": "resnet", "width": 16, "layers": [1, 1, 1, 1]}}
    save_bundle(tmp_path, build_model(wide, 4), list("abcd"), preset("synth"))
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["arch"] = TINY_ARCH
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="shape"):
        load_bundle(tmp_path)


def test_missing_bundle_says_how_to_make_one(tmp_path):
    with pytest.raises(BundleError, match="mmdeploy train"):
        load_bundle(tmp_path / "nope")
