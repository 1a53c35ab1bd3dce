"""Every encoder x fusion: forward, backward, no NaN; parameter groups; masking; absent modalities."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmdeploy.errors import ConfigError
from mmdeploy.models import ENCODERS as ENCODER_REGISTRY
from mmdeploy.models import FUSIONS as FUSION_REGISTRY
from mmdeploy.models import build_model

# Tiny settings per registered entry (an entry registered without one is built with its defaults); the
# tests are parametrized over the registries, so a new encoder or fusion is tested as soon as it exists.
TINY_ENCODERS = {
    "resnet": ({"type": "resnet", "width": 4, "layers": [1, 1]},) * 2,
    "conformer": ({"type": "conformer", "dim": 8, "depth": 1, "heads": 2, "ff_mult": 2, "kernel": 3, "bins": 8},
                  {"type": "conformer", "dim": 8, "depth": 1, "heads": 2, "ff_mult": 2, "kernel": 3, "stem_width": 4}),
}
ENCODERS = {
    **{kind: TINY_ENCODERS.get(kind, ({"type": kind},) * 2)
       for kind in sorted(set(ENCODER_REGISTRY["audio"]) | set(ENCODER_REGISTRY["video"]))},
    "mixed": ({"type": "resnet", "width": 4, "layers": [1, 1]},
              {"type": "conformer", "dim": 16, "depth": 1, "heads": 2, "ff_mult": 2, "kernel": 3, "stem_width": 4}),
}
TINY_FUSIONS = {"gated": {"hidden": 8}, "mid": {"hidden": 8}, "transformer": {"dim": 8, "depth": 1, "heads": 2,
                                                                              "ff_mult": 2}}
FUSIONS = {name: TINY_FUSIONS.get(name, {}) for name in FUSION_REGISTRY}
# fusion parameter names (under "fusion.") in each balancing group: every registered fusion must say
FUSION_GROUPS = {
    "late": {"audio": {"weights.audio.weight"}, "video": {"weights.video.weight"}, "shared": {"bias"}},
    "sum": {"audio": set(), "video": set(), "shared": set()},
    "film": {"audio": set(), "video": set(), "shared": {"film.weight", "film.bias", "out.weight", "out.bias"}},
    "gated": {"audio": {"gate.weight", "gate.bias"}, "video": {"project.weight", "project.bias"},
              "shared": {"out.weight", "out.bias"}},
    "mid": {"audio": {"weights.audio.weight"}, "video": {"weights.video.weight"},
            "shared": {"bias", "mlp.2.weight", "mlp.2.bias", "mlp.5.weight", "mlp.5.bias"}},
    "transformer": {"audio": {"project.audio.weight", "project.audio.bias"},
                    "video": {"project.video.weight", "project.video.bias"}, "shared": None},  # None: the rest
    "prob-mean": {"audio": set(), "video": set(), "shared": set()},  # no parameters of its own
}


def test_the_tables_name_only_registered_entries():
    assert set(TINY_ENCODERS) <= set(ENCODER_REGISTRY["audio"]) & set(ENCODER_REGISTRY["video"])
    assert set(TINY_FUSIONS) <= set(FUSION_REGISTRY) and set(FUSION_GROUPS) <= set(FUSION_REGISTRY)


def tiny(encoder: str = "resnet", fusion: str = "late", classes: int = 3):
    audio, video = ENCODERS[encoder]
    return build_model({"audio": audio, "video": video, "fusion": {"type": fusion, **FUSIONS[fusion]}}, classes)


def batch(b: int = 2, frames: int = 2):
    torch.manual_seed(1)
    return torch.randn(b, 1, 16, 16), torch.randn(b, 3, frames, 16, 16), torch.tensor([0, 2, 1, 1][:b])


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_forward_backward_every_encoder_and_fusion(encoder, fusion):
    torch.manual_seed(0)
    model = tiny(encoder, fusion)
    audio, video, labels = batch()
    out = model(audio, video)
    assert {k: v.shape for k, v in out.items()} == {k: (2, 3) for k in ("audio", "video", "fused")}
    sum(F.cross_entropy(out[k], labels) for k in out).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_param_groups_are_disjoint_complete_and_explicit(fusion):
    model = tiny("conformer" if fusion == "transformer" else "resnet", fusion)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = model.param_groups()
    assert set(groups) == {"audio", "video", "shared"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(names), "groups must cover every parameter exactly once"
    by_group = {g: {names[id(p)] for p in ps} for g, ps in groups.items()}
    fusion_names = {n.removeprefix("fusion.") for n in names.values() if n.startswith("fusion.")}
    assert fusion in FUSION_GROUPS, f"fusion {fusion!r} is registered: add its parameter groups to FUSION_GROUPS"
    for g, expected in FUSION_GROUPS[fusion].items():
        got = {n.removeprefix("fusion.") for n in by_group[g] if n.startswith("fusion.")}
        if expected is None:  # transformer: everything not in a modality's projection is shared
            expected = fusion_names - FUSION_GROUPS[fusion]["audio"] - FUSION_GROUPS[fusion]["video"]
            assert {"cls", "modality_embedding", "out.weight"} <= expected
        assert got == expected, g
    for m in ("audio", "video"):
        assert {n for n in by_group[m] if not n.startswith("fusion.")} == \
            {n for n in names.values() if n.startswith((f"encoders.{m}.", f"heads.{m}."))}
    assert not any(n.startswith(("encoders.", "heads.")) for n in by_group["shared"])


def test_late_resnet_keeps_state_dict_names():
    keys = set(tiny().state_dict())
    assert {"encoders.audio.net.stem.0.weight", "encoders.video.net.stages.0.0.conv1.weight", "heads.audio.weight",
            "heads.video.bias", "fusion.weights.audio.weight", "fusion.weights.video.weight", "fusion.bias"} <= keys


@pytest.mark.parametrize("encoder", ["resnet", "conformer"])
@pytest.mark.parametrize("fusion", ["late", "transformer"])
def test_absent_modality_answers_from_the_present_head(encoder, fusion):
    model = tiny(encoder, fusion).eval()
    audio, video, _ = batch()
    only_audio, only_video = model(audio, None), model(None, video)
    assert only_audio["video"] is None and torch.equal(only_audio["fused"], only_audio["audio"])
    assert only_video["audio"] is None and torch.equal(only_video["fused"], only_video["video"])
    both = model(audio, video)
    torch.testing.assert_close(only_audio["audio"], both["audio"])
    with pytest.raises(ValueError):
        model(None, None)


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_conformer_masks_padding_and_never_mixes_samples(modality):
    torch.manual_seed(0)
    model = tiny("conformer").eval()
    encoder = model.encoders[modality]
    x = torch.randn(3, 1, 16, 12) if modality == "audio" else torch.randn(3, 3, 6, 16, 16)
    lengths = torch.tensor([x.shape[2 if modality == "video" else 3], 5, 3])
    pooled = encoder(x, lengths)
    noisy = x.clone()
    if modality == "audio":
        noisy[..., 5:] = 99.0
    else:
        noisy[:, :, 5:] = 99.0
    torch.testing.assert_close(encoder(noisy, lengths)[1], pooled[1])  # padding content is ignored
    alone = encoder(x[1:2, ..., :5] if modality == "audio" else x[1:2, :, :5])
    torch.testing.assert_close(alone[0], pooled[1], atol=1e-5, rtol=1e-5)  # = the unpadded sample alone
    torch.testing.assert_close(encoder(x[:1])[0], encoder(x)[0], atol=1e-5, rtol=1e-5)  # batch-independent
    tokens, mask = encoder.tokens(x, lengths)
    assert tokens.shape[:2] == mask.shape and mask.sum(1).tolist() == lengths.tolist()


def test_resnet_tokens_pool_to_the_paper_feature_and_mask_time():
    model = tiny().eval()
    audio, video, _ = batch()
    enc = model.encoders["audio"]
    torch.testing.assert_close(enc(audio), enc.net(audio).mean(dim=(2, 3)))
    _, mask = enc.tokens(torch.randn(2, 1, 16, 64), torch.tensor([64, 16]))
    assert mask[0].all() and mask[1].sum() < mask.shape[1]
    venc = model.encoders["video"]
    b, c, n, h, w = video.shape
    maps = venc.net(video.transpose(1, 2).reshape(b * n, c, h, w))
    torch.testing.assert_close(venc(video), maps.reshape(b, n, maps.shape[1], -1).mean(dim=(1, 3)))


def test_lengths_reach_encoders_and_token_fusion():
    model = tiny("conformer", "transformer").eval()
    audio, video, _ = batch(frames=4)
    lengths = {"audio": torch.tensor([16, 8]), "video": torch.tensor([4, 2])}
    fused = model(audio, video, lengths=lengths)["fused"]
    padded_audio, padded_video = audio.clone(), video.clone()
    padded_audio[1, ..., 8:] = 7.0
    padded_video[1, :, 2:] = 7.0
    torch.testing.assert_close(model(padded_audio, padded_video, lengths=lengths)["fused"], fused)
    out = model(audio, video, with_features=True)
    assert set(out["features"]) == {"audio", "video"} and out["features"]["audio"].shape == (2, 8)


@pytest.mark.parametrize("arch, key", [
    ({"audio": {"type": "lstm"}}, "model.audio.type"),
    ({"audio": {"type": "resnet", "width": 0}}, "model.audio"),
    ({"audio": {"type": "resnet", "depth": 3}}, "model.audio"),
    ({"video": {"type": "conformer", "dim": 10, "heads": 4}}, "model.video"),
    ({"video": {"type": "conformer", "dim": 8, "heads": 2, "kernel": 4}}, "model.video"),
    ({"fusion": {"type": "concat"}}, "model.fusion.type"),
    ({"fusion": {"type": "mid", "hiden": 8}}, "model.fusion"),
    ({"fusion": {"type": "transformer", "dim": 6, "heads": 4}}, "model.fusion"),
])
def test_bad_architecture_raises_config_error_naming_the_key(arch, key):
    full = {"audio": dict(ENCODERS["resnet"][0]), "video": dict(ENCODERS["resnet"][1]), "fusion": {"type": "late"}}
    full.update(arch)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(full, 3)
