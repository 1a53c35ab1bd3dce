"""Clip + ClipSpec -> (spectrogram [1, F, T], frames [3, N, H, W]): the ONE preprocessing function.

Training caches, export checks, `mmdeploy classify` and the HTTP service all call `compute_features`
with the bundle's spec, so a model sees identical tensors everywhere. Choices the spec does not spell out:
- STFT padding with center=true is zeros (librosa >= 0.10's default), window periodic (scipy/librosa
  `fftbins=True`); Tukey uses alpha 0.25 (scipy's default in `signal.spectrogram`).
- scale="psd" with center=false reproduces `scipy.signal.spectrogram(x, fs, window, nperseg=n_fft,
  noverlap=n_fft - hop, scaling="density")` including its default per-segment mean removal
  (`detrend="constant"`): one-sided density |X|^2 / (fs * sum(w^2)), doubled except the DC and Nyquist
  bins (checked against scipy 1.17 to 1e-6 in log units). With center=true the same scaling is applied
  to the centred, zero-padded STFT (no detrending). A win_length < n_fft window is centred in n_fft.
- The mel filterbank is torchaudio's (HTK scale, no normalisation, 0 Hz to fs/2), applied to the scaled
  spectrogram.
- Frames are squashed (no crop) with bilinear, antialiased interpolation on uint8 (rounded to uint8,
  like PIL/torchvision resizing of images), then /255 and normalised.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np
import torch

from mmdeploy.spec import ClipSpec


def compute_features(clip, spec: ClipSpec) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(audio [1, F, T] float32 | None, video [3, N, H, W] float32 | None) for a decoded Clip."""
    audio = spectrogram(clip.audio, spec) if clip.audio is not None else None
    video = frame_tensor(clip.frames, spec) if clip.frames is not None else None
    return audio, video


def file_features(path: str | os.PathLike, spec: ClipSpec, start: float = 0.0, end: float | None = None,
                  audio_path: str | os.PathLike | None = None,
                  options=None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """compute_features(decode_window(...)): features of one window of a file (`options`: media.DecodeOptions)."""
    from mmdeploy.media import DecodeOptions, decode_window

    return compute_features(decode_window(path, spec, start, end, audio_path, options or DecodeOptions()), spec)


# ---- audio ---------------------------------------------------------------------------------------
def fit_length(samples: np.ndarray, spec: ClipSpec) -> torch.Tensor:
    """Exactly spec.audio_samples: cut, tile (repeat from the start) or zero-pad at the end."""
    n = spec.audio_samples
    x = torch.as_tensor(np.asarray(samples, np.float32)).reshape(-1)
    if x.numel() == 0:
        return torch.zeros(n)
    if x.numel() < n:
        if spec.short_audio == "tile":
            x = x.repeat(math.ceil(n / x.numel()))
        else:
            x = torch.nn.functional.pad(x, (0, n - x.numel()))
    return x[:n].contiguous()


def spectrogram(samples: np.ndarray, spec: ClipSpec) -> torch.Tensor:
    """Mono samples at spec.sample_rate -> normalised log spectrogram [1, F, T] float32."""
    x = fit_length(samples, spec)
    if spec.clip_audio:
        x = x.clamp(-1.0, 1.0)
    win_length = spec.win_length or spec.n_fft
    window = _window(spec.window, win_length)
    x64 = x.double()
    if spec.scale == "psd" and not spec.center:
        frames = x64.unfold(0, spec.n_fft, spec.hop_length)  # [T, n_fft], scipy's segments
        frames = frames - frames.mean(dim=1, keepdim=True)
        padded = torch.nn.functional.pad(window, ((spec.n_fft - win_length) // 2,
                                                  spec.n_fft - win_length - (spec.n_fft - win_length) // 2))
        stft = torch.fft.rfft(frames * padded, n=spec.n_fft).T  # [F, T]
    else:
        stft = torch.stft(x64, spec.n_fft, spec.hop_length, win_length, window, center=spec.center,
                          pad_mode="constant", return_complex=True)
    power = stft.real ** 2 + stft.imag ** 2
    if spec.scale == "magnitude":
        s = power.sqrt()
    elif spec.scale == "power":
        s = power
    else:
        s = power / (spec.sample_rate * float((window ** 2).sum()))
        last = -1 if spec.n_fft % 2 == 0 else None  # the Nyquist bin exists only for even n_fft
        s[1:last] *= 2.0
    if spec.audio_feature == "mel":
        s = _mel(spec.n_fft // 2 + 1, spec.n_mels, spec.sample_rate).T @ s
    s = torch.log(s + spec.log_offset)
    s = (s - spec.audio_mean) / spec.audio_std
    out = s.float().unsqueeze(0)
    assert tuple(out.shape[1:]) == spec.spectrogram_shape, (out.shape, spec.spectrogram_shape)
    return out


@lru_cache(maxsize=16)
def _window(kind: str, length: int) -> torch.Tensor:
    """Periodic window (scipy get_window(..., fftbins=True)), float64."""
    if kind == "hann":
        return torch.hann_window(length, periodic=True, dtype=torch.float64)
    if kind == "hamming":
        return torch.hamming_window(length, periodic=True, dtype=torch.float64)
    return _tukey(length, 0.25)


def _tukey(length: int, alpha: float) -> torch.Tensor:
    """scipy.signal.windows.tukey(length + 1, alpha, sym=True)[:-1] (periodic)."""
    m = length + 1
    n = np.arange(m, dtype=np.float64)
    w = np.ones(m)
    width = int(np.floor(alpha * (m - 1) / 2.0))
    rise, fall = n[:width + 1], n[m - width - 1:]
    w[:width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * rise / alpha / (m - 1))))
    w[m - width - 1:] = 0.5 * (1 + np.cos(np.pi * (-2.0 / alpha + 1 + 2.0 * fall / alpha / (m - 1))))
    return torch.from_numpy(w[:-1].copy())


@lru_cache(maxsize=16)
def _mel(n_freqs: int, n_mels: int, sample_rate: int) -> torch.Tensor:
    """[n_freqs, n_mels] float64 triangular filters (torchaudio, HTK scale, no norm)."""
    import torchaudio.functional as AF

    return AF.melscale_fbanks(n_freqs, 0.0, sample_rate / 2.0, n_mels, sample_rate).double()


# ---- video ---------------------------------------------------------------------------------------
def frame_tensor(frames: np.ndarray, spec: ClipSpec) -> torch.Tensor:
    """RGB uint8 [N, H, W, 3] -> resized, /255, normalised [3, N, frame_height, frame_width] float32."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [N, 3, H, W] uint8, channels-last
    size = (spec.frame_height, spec.frame_width)
    if tuple(x.shape[2:]) != size:  # torch's uint8 channels-last antialias kernel: ~100x the float path
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    std = torch.tensor(spec.frame_std).view(3, 1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), torch.tensor(spec.frame_mean).view(3, 1, 1, 1) / std
    out = x.permute(1, 0, 2, 3).contiguous().float().mul_(scale).sub_(shift)  # [3, N, H, W]: (x/255 - mean)/std
    if out.shape[1] != spec.frames:  # a clip decoded with another frame count: evenly spaced frames
        idx = torch.linspace(0, out.shape[1] - 1, spec.frames).round().long()
        out = out[:, idx].contiguous()
    return out
