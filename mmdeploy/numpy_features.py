"""Clip + ClipSpec -> (spectrogram [1, F, T], frames [3, N, H, W]) as float32 numpy, without torch.

The inference twin of `mmdeploy.features` (which stays the reference: training caches its tensors). The
decode workers of `mmdeploy classify`, the service and the batch engines call `compute_features` here,
so a process that runs an ONNX Runtime or OpenVINO model never imports torch (about 2.8 s of a cold CLI).
Every step follows features.py's choices, operation for operation:
- audio: the same cut / tile / pad and clipping; the STFT in float64 (zero-padded centre frames, or
  scipy's detrended segments for psd without centring), the same scaling, torchaudio's HTK mel
  filterbank rebuilt in float32 like `torchaudio.functional.melscale_fbanks`, log, normalisation, float32;
- video: torch's uint8 antialiased bilinear resize (`interpolate(..., antialias=True)` on uint8, the
  Pillow-SIMD algorithm): per axis, triangle-filter weights in float64 normalised per output pixel,
  rounded to int16 at the precision where the largest weight still fits, width pass then height pass,
  each an integer dot product + half an LSB, shifted and clamped to uint8 (float32 matrix products, and the
  few outputs near a rounding boundary redone in int64: `_pass`); then (x * 1/(255 std) - mean/std) in
  float32 with the same float32 constants.
How close the two are is a test (`tests/test_features.py`, `TOLERANCE`), on every shared clip and on the
generated codec matrix: frames are bit-identical; spectrograms differ only by the FFT libraries'
rounding (numpy's pocketfft vs torch's), within `TOLERANCE["audio"]` in normalised log units.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from mmdeploy.spec import ClipSpec

# The contract between the two implementations (max |numpy - torch| per element; tests/test_features.py).
TOLERANCE = {"audio": 1e-4, "video": 0.0}


def compute_features(clip, spec: ClipSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(audio [1, F, T] float32 | None, video [3, N, H, W] float32 | None) for a decoded Clip."""
    audio = spectrogram(clip.audio, spec) if clip.audio is not None else None
    video = frame_tensor(clip.frames, spec) if clip.frames is not None else None
    return audio, video


# ---- audio ---------------------------------------------------------------------------------------
def fit_length(samples: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Exactly spec.audio_samples float32: cut, tile (repeat from the start) or zero-pad at the end."""
    n = spec.audio_samples
    x = np.asarray(samples, np.float32).reshape(-1)
    if x.size == 0:
        return np.zeros(n, np.float32)
    if x.size < n:
        if spec.short_audio == "tile":
            x = np.tile(x, math.ceil(n / x.size))
        else:
            x = np.concatenate([x, np.zeros(n - x.size, np.float32)])
    return np.ascontiguousarray(x[:n])


def spectrogram(samples: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Mono samples at spec.sample_rate -> normalised log spectrogram [1, F, T] float32."""
    x = fit_length(samples, spec)
    if spec.clip_audio:
        x = np.clip(x, -1.0, 1.0)
    win_length = spec.win_length or spec.n_fft
    left = (spec.n_fft - win_length) // 2
    window = np.zeros(spec.n_fft)
    window[left:left + win_length] = _window(spec.window, win_length)
    x64 = x.astype(np.float64)
    if spec.center:
        x64 = np.pad(x64, spec.n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(x64, spec.n_fft)[::spec.hop_length]  # [T, n_fft]
    if spec.scale == "psd" and not spec.center:
        frames = frames - frames.mean(axis=1, keepdims=True)
    stft = np.fft.rfft(frames * window, n=spec.n_fft, axis=1).T  # [F, T]
    power = stft.real ** 2 + stft.imag ** 2
    if spec.scale == "magnitude":
        s = np.sqrt(power)
    elif spec.scale == "power":
        s = power
    else:
        s = power / (spec.sample_rate * float((_window(spec.window, win_length) ** 2).sum()))
        last = -1 if spec.n_fft % 2 == 0 else None  # the Nyquist bin exists only for even n_fft
        s[1:last] *= 2.0
    if spec.audio_feature == "mel":
        s = mel_filters(spec.n_fft // 2 + 1, spec.n_mels, spec.sample_rate).T @ s
    s = np.log(s + spec.log_offset)
    s = (s - spec.audio_mean) / spec.audio_std
    out = np.ascontiguousarray(s.astype(np.float32)[None])
    assert tuple(out.shape[1:]) == spec.spectrogram_shape, (out.shape, spec.spectrogram_shape)
    return out


@lru_cache(maxsize=16)
def _window(kind: str, length: int) -> np.ndarray:
    """Periodic window (scipy get_window(..., fftbins=True)), float64, as torch's hann/hamming_window."""
    n = np.arange(length, dtype=np.float64)
    if kind == "hann":
        return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / length)
    if kind == "hamming":
        return 0.54 - 0.46 * np.cos(2.0 * np.pi * n / length)
    return _tukey(length, 0.25)


def _tukey(length: int, alpha: float) -> np.ndarray:
    """scipy.signal.windows.tukey(length + 1, alpha, sym=True)[:-1] (periodic); the same as features.py."""
    m = length + 1
    n = np.arange(m, dtype=np.float64)
    w = np.ones(m)
    width = int(np.floor(alpha * (m - 1) / 2.0))
    rise, fall = n[:width + 1], n[m - width - 1:]
    w[:width + 1] = 0.5 * (1 + np.cos(np.pi * (-1 + 2.0 * rise / alpha / (m - 1))))
    w[m - width - 1:] = 0.5 * (1 + np.cos(np.pi * (-2.0 / alpha + 1 + 2.0 * fall / alpha / (m - 1))))
    return w[:-1].copy()


def _linspace32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32: start + i * step for the first half, end - (steps - 1 - i) * step after."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    i = np.arange(steps, dtype=np.float32)
    half = steps // 2
    return np.where(np.arange(steps) < half, start32 + step * i,
                    end32 - step * (np.float32(steps - 1) - i)).astype(np.float32)


@lru_cache(maxsize=16)
def mel_filters(n_freqs: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """[n_freqs, n_mels] float64 triangular filters: torchaudio.functional.melscale_fbanks(n_freqs, 0,
    sample_rate / 2, n_mels, sample_rate) (HTK scale, no norm), computed in float32 as torchaudio does."""
    all_freqs = _linspace32(0.0, float(sample_rate // 2), n_freqs)
    m_min = 2595.0 * math.log10(1.0 + 0.0 / 700.0)
    m_max = 2595.0 * math.log10(1.0 + (sample_rate / 2.0) / 700.0)
    m_pts = _linspace32(m_min, m_max, n_mels + 2)
    f_pts = (np.float32(700.0) * (np.float32(10.0) ** (m_pts / np.float32(2595.0)) - np.float32(1.0))).astype(np.float32)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = (np.float32(-1.0) * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return np.maximum(np.float32(0.0), np.minimum(down, up)).astype(np.float64)


# ---- video ---------------------------------------------------------------------------------------
def frame_tensor(frames: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """RGB uint8 [N, H, W, 3] -> resized, /255, normalised [3, N, frame_height, frame_width] float32."""
    x = resize_planar(np.asarray(frames, dtype=np.uint8), spec.frame_height, spec.frame_width)
    std = np.asarray(spec.frame_std, np.float32).reshape(3, 1, 1, 1)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    shift = np.asarray(spec.frame_mean, np.float32).reshape(3, 1, 1, 1) / std
    out = x  # float32 integers 0..255, exact
    out *= scale  # two float32 steps, as torch's mul_ then sub_
    out -= shift
    if out.shape[1] != spec.frames:  # a clip decoded with another frame count: evenly spaced frames
        idx = np.round(_linspace32(0, out.shape[1] - 1, spec.frames)).astype(np.int64)
        out = np.ascontiguousarray(out[:, idx])
    return out


def resize_planar(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, H, W, C] uint8 -> [C, N, height, width] float32 holding the uint8 values of torch's antialiased
    bilinear uint8 resize (`interpolate(..., antialias=True)`): the width pass, then the height pass, each
    skipped when that size already fits."""
    x = np.transpose(frames, (3, 0, 1, 2)).astype(np.float32, order="C")  # [C, N, H, W], planar
    c, n, h, w = x.shape
    if w != width:
        x = _pass(x.reshape(-1, w), w, width).reshape(c, n, h, width)
    if h != height:
        rows = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).reshape(-1, h)  # small now: [C*N*width, h]
        x = _pass(rows, h, height).reshape(c, n, width, height).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(x)


def _pass(x: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """One separable pass over the last axis of x [rows, in_size] (float32 holding integers 0..255): torch's
    integer dot product of each output pixel's taps with its int16 weights, + 2^(p-1), >> p, clamped.

    The products run as float32 matrix products over bands of BAND output pixels (each reads a contiguous run
    of inputs). Every product is exact (8-bit x 15-bit), but a float32 sum of them may round: by at most
    (band width) * 2^-24 * 255 of one output level. So an output whose scaled sum lies within that much (twice,
    to be safe) of a rounding boundary is recomputed in int64 from its taps: the result is torch's, exactly."""
    bands, (first, weights, precision) = _bands(in_size, out_size)
    acc = np.empty((x.shape[0], out_size), np.float32)
    widest = 1
    for lo, hi, a, b, band in bands:
        acc[:, lo:hi] = x[:, a:b] @ band
        widest = max(widest, b - a)
    acc *= np.float32(1.0 / (1 << precision))  # exact: a power of two
    acc += np.float32(0.5)
    out = np.floor(acc)
    margin = np.float32(DOUBT * widest * 255.0 * 2.0 ** -24 + 2.0 ** -15)
    frac = acc - out
    doubt = np.nonzero((frac < margin) | (frac > 1 - margin))
    if doubt[0].size:
        rows, cols = doubt
        taps = first[cols][:, None] + np.arange(weights.shape[1])  # [n, taps]; weights are 0 past each pixel's own
        values = x[rows[:, None], np.minimum(taps, in_size - 1)].astype(np.int64)
        exact = (values * weights[cols].astype(np.int64)).sum(axis=1)
        out[rows, cols] = (exact + (1 << (precision - 1))) >> precision
    return np.clip(out, 0.0, 255.0, out=out)


DOUBT = 2.0  # x the float32 sum's error bound: outputs this close to a rounding boundary are redone exactly
BAND = 8  # output pixels per matrix product: fewer products vs fewer zero weights in each (8: fastest at 640->64)


@lru_cache(maxsize=64)
def _bands(in_size: int, out_size: int) -> tuple[list[tuple[int, int, int, int, np.ndarray]], tuple]:
    """([(lo, hi, a, b, float32 weights [b - a, hi - lo])] for each band of output pixels lo..hi, which reads
    inputs a..b; int16_weights(...)). Weights outside a pixel's own taps are zero."""
    first, weights, precision = int16_weights(in_size, out_size)
    taps = weights.shape[1]
    bands = []
    for lo in range(0, out_size, BAND):
        hi = min(lo + BAND, out_size)
        a = int(first[lo:hi].min())
        b = min(in_size, int(first[lo:hi].max()) + taps)
        band = np.zeros((b - a, hi - lo), np.float32)
        for i in range(lo, hi):
            k = min(taps, b - int(first[i]))
            band[first[i] - a:first[i] - a + k, i - lo] = weights[i, :k]
        bands.append((lo, hi, a, b, band))
    return bands, (first, weights, precision)


@lru_cache(maxsize=64)
def int16_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(first input index [out], int16 weights [out, taps], precision) of torch's uint8 antialiased
    bilinear resize along one axis (align_corners=False, no scale factor)."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # interp_size 2 * 0.5, widened by the scale when shrinking
    taps = int(math.ceil(support)) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    first = np.zeros(out_size, np.int64)
    real = np.zeros((out_size, taps), np.float64)
    wt_max = 0.0
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xsize = min(max(min(int(center + support + 0.5), in_size) - xmin, 0), taps)
        ws = [max(0.0, 1.0 - abs((j + xmin - center + 0.5) * invscale)) for j in range(xsize)]
        total = 0.0
        for v in ws:
            total += v
        if total != 0.0:
            ws = [v / total for v in ws]
            wt_max = max([wt_max, *ws])
        first[i] = xmin
        real[i, :xsize] = ws
    precision = 0
    while precision < 22 and int(0.5 + wt_max * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = real * (1 << precision)
    weights = np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int16)
    return first, weights, precision
