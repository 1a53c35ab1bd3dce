"""numpy_features (the torch-free inference path) against features (torch, what training caches): one ClipSpec
contract. Per element, |numpy - torch| <= numpy_features.TOLERANCE (frames: bit-identical), and the same top-1
through a model, for every shared clip and the generated codec matrix, under every preset; the resize alone on
random shapes, and every spectrogram option."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mmdeploy import features, numpy_features
from mmdeploy.media import decode_window, probe
from mmdeploy.numpy_features import TOLERANCE
from mmdeploy.spec import PRESETS, preset
from tests.conftest import TINY_ARCH
from tests.test_decode_exact import MATRIX, shared_clips, write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# every preset, plus the tests' tiny spec and one with a non-default window / mel / psd mix
SPECS = {**PRESETS, "tiny": preset("synth").replace(frame_height=32, frame_width=32, n_mels=32),
         "psd-mel": preset("ave").replace(window_seconds=2.0, audio_feature="mel", n_mels=40, win_length=400,
                                          frame_height=48, frame_width=80)}


def both(clip, spec):
    ta, tv = features.compute_features(clip, spec)
    na, nv = numpy_features.compute_features(clip, spec)
    return (None if ta is None else ta.numpy(), None if tv is None else tv.numpy()), (na, nv)


def assert_agree(clip, spec, where: str) -> tuple:
    (ta, tv), (na, nv) = both(clip, spec)
    for name, t, n in (("audio", ta, na), ("video", tv, nv)):
        assert (t is None) == (n is None), f"{where}: {name} present in one implementation only"
        if t is None:
            continue
        assert n.dtype == np.float32 and n.shape == t.shape and n.flags.c_contiguous, (where, name, n.shape)
        diff = float(np.abs(n.astype(np.float64) - t).max())
        assert diff <= TOLERANCE[name], f"{where}: {name} differs by {diff:g} (tolerance {TOLERANCE[name]:g})"
    return (ta, tv), (na, nv)


_models: dict[str, torch.nn.Module] = {}


def model_for(spec_name: str):
    from mmdeploy.models import build_model

    if spec_name not in _models:
        torch.manual_seed(0)
        _models[spec_name] = build_model(TINY_ARCH, 6).eval()
    return _models[spec_name]


def assert_same_top1(spec_name: str, spec, pairs: list[tuple]) -> None:
    """Both implementations' tensors through one model: the same top-1 on every head, per clip."""
    def stack(xs, shape):
        return torch.from_numpy(np.stack([x if x is not None else np.zeros(shape, np.float32) for x in xs]))

    for k in (0, 1):  # torch's tensors, then numpy's
        pairs_k = [p[k] for p in pairs]
        audio = stack([a for a, _ in pairs_k], (1, *spec.spectrogram_shape))
        video = stack([v for _, v in pairs_k], spec.frames_shape)
        with torch.no_grad():
            out = model_for(spec_name)(audio, video)
        heads = [out[h] for h in ("fused", "audio", "video")] if isinstance(out, dict) else list(out)
        top = torch.stack([h.argmax(1) for h in heads])
        if k == 0:
            reference = top
    assert torch.equal(top, reference), f"{spec_name}: top-1 differs between torch and numpy features"


@pytest.mark.parametrize("spec_name", sorted(SPECS))
def test_shared_clips_agree(media_dir, spec_name):
    spec = SPECS[spec_name]
    pairs = []
    for name in shared_clips():
        path = media_dir / name
        duration = probe(path).duration or 2.0
        clip = decode_window(path, spec, start=min(1.0, duration / 3))
        pairs.append(assert_agree(clip, spec, f"{name} ({spec_name})"))
    assert_same_top1(spec_name, spec, pairs)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("agree")
    return {name: write_video(root / name, **kw) for name, kw in MATRIX.items()}


@pytest.mark.parametrize("spec_name", ["synth", "cremad", "tiny", "psd-mel"])
def test_codec_matrix_agrees(generated, spec_name):
    spec = SPECS[spec_name]
    pairs = [assert_agree(decode_window(path, spec, start=0.9), spec, f"{name} ({spec_name})")
             for name, path in sorted(generated.items())]
    assert_same_top1(spec_name, spec, pairs)


def test_resize_is_bit_identical_to_torch_on_random_shapes():
    """torch's uint8 antialiased bilinear resize: shrink, grow, one axis only, 1-pixel edges, noise and ramps."""
    rng = np.random.default_rng(0)
    shapes = [((360, 640), (64, 64)), ((720, 1280), (224, 224)), ((96, 160), (224, 224)), ((1, 7), (5, 3)),
              ((64, 64), (64, 33)), ((33, 64), (64, 64))] + [
        (tuple(rng.integers(1, 180, 2)), tuple(rng.integers(1, 120, 2))) for _ in range(60)]
    for i, ((h, w), (oh, ow)) in enumerate(shapes):
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        if i % 2:
            frames[:] = np.linspace(0, 255, w, dtype=np.float64).astype(np.uint8)[None, None, :, None]
        t = torch.from_numpy(frames).permute(0, 3, 1, 2)
        if (h, w) != (oh, ow):
            t = torch.nn.functional.interpolate(t, size=(int(oh), int(ow)), mode="bilinear", align_corners=False,
                                                antialias=True)
        ours = numpy_features.resize_planar(frames, int(oh), int(ow))
        assert np.array_equal(ours, t.permute(1, 0, 2, 3).numpy()), ((h, w), (oh, ow))


def test_resize_exact_path_alone_matches_torch(monkeypatch):
    """The int64 recomputation that fixes float32 sums near a rounding boundary, applied to every output."""
    monkeypatch.setattr(numpy_features, "DOUBT", 1e9)  # every output is "near a boundary"
    frames = np.random.default_rng(3).integers(0, 256, (2, 90, 160, 3), dtype=np.uint8)
    t = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2), size=(40, 64),
                                        mode="bilinear", align_corners=False, antialias=True)
    assert np.array_equal(numpy_features.resize_planar(frames, 40, 64), t.permute(1, 0, 2, 3).numpy())


@pytest.mark.parametrize("options", [
    {"scale": "magnitude", "window": "hann", "center": True},
    {"scale": "power", "window": "hamming", "center": False},
    {"scale": "psd", "window": "tukey", "center": False},
    {"scale": "psd", "window": "hann", "center": True, "win_length": 300},
    {"scale": "magnitude", "audio_feature": "mel", "n_mels": 40, "center": True, "n_fft": 400},
    {"scale": "power", "audio_feature": "mel", "n_mels": 32, "center": False, "audio_mean": -3.0, "audio_std": 2.5},
    {"clip_audio": False, "short_audio": "pad"},
])
def test_spectrogram_options_agree(options):
    spec = preset("ave").replace(window_seconds=0.5, hop_length=160, **{"window": "hann", **options})
    rng = np.random.default_rng(1)
    for n in (spec.audio_samples, spec.audio_samples // 3, 0):  # full, tiled or padded, empty
        x = (0.6 * rng.standard_normal(n)).astype(np.float32)  # some samples > 1: clipping matters
        t = features.spectrogram(x, spec).numpy()
        ours = numpy_features.spectrogram(x, spec)
        assert ours.dtype == np.float32 and ours.shape == t.shape
        assert np.abs(ours.astype(np.float64) - t).max() <= TOLERANCE["audio"], (options, n)


def test_mel_filters_match_torchaudio():
    import torchaudio.functional as AF

    for n_freqs, n_mels, rate in ((257, 64, 16000), (257, 128, 22050), (201, 40, 8000)):
        ours = numpy_features.mel_filters(n_freqs, n_mels, rate)
        theirs = AF.melscale_fbanks(n_freqs, 0.0, rate / 2.0, n_mels, rate).double().numpy()
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)


def test_other_frame_counts_pick_the_same_frames():
    spec = preset("synth").replace(frames=3, frame_height=8, frame_width=8)
    frames = np.stack([np.full((10, 12, 3), v, np.uint8) for v in (0, 50, 100, 150, 200)])
    np.testing.assert_array_equal(numpy_features.frame_tensor(frames, spec), features.frame_tensor(frames, spec).numpy())


def test_no_torch_in_the_module():
    """The module itself never needs torch (the import-graph test cannot see third-party imports)."""
    import ast

    tree = ast.parse(Path(numpy_features.__file__).read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {"torch", "torchaudio", "torchvision"}, names
