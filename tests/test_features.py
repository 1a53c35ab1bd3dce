"""features.py: exact shapes for every preset, numpy references for each spectrogram option, frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mmdeploy.features import compute_features, file_features, fit_length, frame_tensor, spectrogram
from mmdeploy.media import Clip, decode_window
from mmdeploy.spec import PRESETS, preset


def make_clip(seconds: float, rate: int, frames: int = 3, size=(37, 53), seed: int = 0) -> Clip:
    rng = np.random.default_rng(seed)
    audio = (0.3 * rng.standard_normal(int(seconds * rate))).astype(np.float32)
    pixels = rng.integers(0, 256, (frames, size[0], size[1], 3), dtype=np.uint8)
    return Clip("mem", 0.0, seconds, audio, pixels, np.arange(frames, dtype=np.float64))


def reference_spectrogram(x: np.ndarray, spec) -> np.ndarray:
    """Loop-over-segments numpy version of every option (scipy.signal.spectrogram for psd; checked
    against scipy 1.17.1 to 1e-6 in log units)."""
    n_fft, hop = spec.n_fft, spec.hop_length
    m = n_fft + 1 if spec.window == "tukey" else n_fft
    if spec.window == "hann":
        w = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    elif spec.window == "hamming":
        w = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    else:  # periodic Tukey(0.25)
        n, width = np.arange(m), int(np.floor(0.25 * (m - 1) / 2))
        w = np.ones(m)
        w[: width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * n[: width + 1] / 0.25 / (m - 1))))
        w[m - width - 1:] = 0.5 * (1 + np.cos(np.pi * (-2.0 / 0.25 + 1 + 2.0 * n[m - width - 1:] / 0.25 / (m - 1))))
        w = w[:-1]
    x = np.clip(x, -1, 1).astype(np.float64) if spec.clip_audio else x.astype(np.float64)
    if spec.center:
        x = np.pad(x, n_fft // 2)
    segments = [x[i:i + n_fft] for i in range(0, len(x) - n_fft + 1, hop)]
    if spec.scale == "psd" and not spec.center:
        segments = [s - s.mean() for s in segments]
    power = np.abs(np.stack([np.fft.rfft(s * w) for s in segments], axis=1)) ** 2
    if spec.scale == "magnitude":
        s = np.sqrt(power)
    elif spec.scale == "power":
        s = power
    else:
        s = power / (spec.sample_rate * (w ** 2).sum())
        s[1:-1] *= 2
    if spec.audio_feature == "mel":
        import torchaudio.functional as AF

        fb = AF.melscale_fbanks(n_fft // 2 + 1, 0.0, spec.sample_rate / 2, spec.n_mels, spec.sample_rate).double()
        s = fb.numpy().T @ s
    return (np.log(s + spec.log_offset) - spec.audio_mean) / spec.audio_std


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_shapes_dtypes_determinism(name):
    spec = preset(name)
    clip = make_clip(spec.window_seconds * 0.7, spec.sample_rate, frames=spec.frames)  # short: tile/pad
    audio, video = compute_features(clip, spec)
    assert audio.dtype == torch.float32 and tuple(audio.shape) == (1, *spec.spectrogram_shape)
    assert video.dtype == torch.float32 and tuple(video.shape) == spec.frames_shape
    assert torch.isfinite(audio).all() and torch.isfinite(video).all()
    again = compute_features(clip, spec)
    assert torch.equal(audio, again[0]) and torch.equal(video, again[1])


@pytest.mark.parametrize("options", [
    {"scale": "magnitude", "window": "hann", "center": True},
    {"scale": "power", "window": "hamming", "center": False},
    {"scale": "psd", "window": "tukey", "center": False},
    {"scale": "psd", "window": "hann", "center": True},
    {"scale": "magnitude", "audio_feature": "mel", "n_mels": 40, "center": True},
    {"scale": "power", "audio_feature": "mel", "n_mels": 32, "center": False, "audio_mean": -3.0, "audio_std": 2.5},
])
def test_spectrogram_matches_numpy_reference(options):
    spec = preset("ave").replace(window_seconds=0.5, hop_length=160, **{"window": "hann", **options})
    x = (0.6 * np.random.default_rng(1).standard_normal(spec.audio_samples)).astype(np.float32)  # some > 1
    ours = spectrogram(x, spec)[0].double().numpy()
    ref = reference_spectrogram(x, spec)
    assert ours.shape == ref.shape == spec.spectrogram_shape
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_tile_pad_and_clip():
    spec = preset("synth").replace(window_seconds=0.01)  # 160 samples
    x = np.arange(1, 61, dtype=np.float32) / 100
    tiled = fit_length(x, spec)
    assert tiled.shape == (160,) and torch.equal(tiled[60:120], tiled[:60]) and tiled[159] == x[39]
    padded = fit_length(x, spec.replace(short_audio="pad"))
    assert torch.equal(padded[:60], torch.from_numpy(x)) and padded[60:].abs().sum() == 0
    assert fit_length(np.zeros(0, np.float32), spec).shape == (160,)
    loud = np.full(spec.audio_samples * 10, 3.0, np.float32)
    spec = preset("synth").replace(scale="power", audio_feature="stft")
    assert torch.allclose(spectrogram(loud, spec), spectrogram(np.ones_like(loud), spec))
    assert not torch.allclose(spectrogram(loud, spec.replace(clip_audio=False)), spectrogram(np.ones_like(loud), spec))


def test_mel_peak_follows_tone():
    spec = preset("synth")
    t = np.arange(spec.audio_samples) / spec.sample_rate
    low, high = (spectrogram(np.sin(2 * np.pi * f * t).astype(np.float32) * 0.5, spec)[0].mean(1).argmax()
                 for f in (300.0, 3000.0))
    assert low < high
    mel = 2595 * np.log10(1 + 3000 / 700)
    centres = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), spec.n_mels + 2)[1:-1]
    assert abs(int(high) - int(np.abs(centres - mel).argmin())) <= 1


def test_frames_are_resized_and_normalised_per_channel():
    spec = preset("synth").replace(frame_height=16, frame_width=24, frames=2)
    frames = np.zeros((2, 45, 77, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 128, 0
    out = frame_tensor(frames, spec)
    assert out.shape == (3, 2, 16, 24) and out.dtype == torch.float32
    for c, value in enumerate((255, 128, 0)):
        expected = (value / 255 - spec.frame_mean[c]) / spec.frame_std[c]
        torch.testing.assert_close(out[c], torch.full((2, 16, 24), expected), atol=1e-5, rtol=0)
    # a left/right split survives the resize (no transposition or channel mix-up)
    frames[:, :, :38, 2] = 255
    out = frame_tensor(frames, spec)
    assert out[2, :, :, :10].mean() > out[2, :, :, -10:].mean()


def test_other_frame_count_is_resampled_evenly():
    spec = preset("synth").replace(frames=3, frame_height=8, frame_width=8)
    frames = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 50, 100, 150, 200)])
    out = frame_tensor(frames, spec)
    assert out.shape == (3, 3, 8, 8)
    levels = (out[0, :, 0, 0] * spec.frame_std[0] + spec.frame_mean[0]) * 255
    torch.testing.assert_close(levels, torch.tensor([0.0, 100.0, 200.0]), atol=1e-3, rtol=0)


def test_absent_modalities_stay_none():
    spec = preset("synth")
    clip = make_clip(1.0, spec.sample_rate)
    assert compute_features(Clip("a", 0.0, 1.0, clip.audio, None), spec)[1] is None
    assert compute_features(Clip("v", 0.0, 1.0, None, clip.frames), spec)[0] is None


def test_file_features_equals_decode_then_compute(tmp_path, tiny_spec):
    from tests.test_media import write_clip

    path = write_clip(tmp_path / "c.mp4", seconds=3.0)
    a1, v1 = file_features(path, tiny_spec, start=0.5)
    a2, v2 = compute_features(decode_window(path, tiny_spec, start=0.5), tiny_spec)
    assert torch.equal(a1, a2) and torch.equal(v1, v2)
    assert tuple(a1.shape[1:]) == tiny_spec.spectrogram_shape and tuple(v1.shape) == tiny_spec.frames_shape
