"""ClipSpec: every preprocessing number, in one frozen object.

The same spec is saved in every bundle and every ONNX file, and `mmdeploy.features.compute_features`
reads nothing else, so training, export checks, the CLI and the service compute identical tensors.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError
from pydantic.dataclasses import dataclass

from mmdeploy.config import describe
from mmdeploy.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Positive = Annotated[StrictInt, Field(gt=0)]
Seconds = Annotated[StrictFloat, Field(gt=0)]
Three = tuple[StrictFloat, StrictFloat, StrictFloat]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ClipSpec:
    """How a window of a file becomes (spectrogram [1, F, T], frames [3, N, H, W]).

    Audio: mono, resampled to `sample_rate`, `window_seconds` long; a shorter clip is tiled (repeated)
    or zero-padded (`short_audio`); optionally clipped to [-1, 1]; STFT (`n_fft`, `hop_length`,
    `win_length`, `window`, `center`) -> `scale` (|S|, |S|^2 or scipy-style one-sided PSD density)
    -> optional mel filterbank (`audio_feature="mel"`, `n_mels`) -> log(x + log_offset)
    -> (x - audio_mean) / audio_std.
    Video: `frames` RGB frames evenly spaced inside the window (at (i + 0.5) * L / N), resized to
    `frame_height` x `frame_width` (squash, bilinear), scaled by 1/255, normalised with
    `frame_mean` / `frame_std` per channel.

    A pydantic dataclass (frozen, hashable): every field is typed strictly (an integer is no boolean, a
    number no string; integers are accepted where floats go), and `from_dict` names the key on any error.
    """

    sample_rate: Positive = 16000
    window_seconds: Seconds = 3.0
    short_audio: Literal["tile", "pad"] = "tile"
    clip_audio: StrictBool = True
    audio_feature: Literal["stft", "mel"] = "stft"
    n_fft: Positive = 512
    hop_length: Positive = 353
    win_length: StrictInt | None = None
    window: Literal["hann", "hamming", "tukey"] = "hann"
    center: StrictBool = True
    scale: Literal["magnitude", "power", "psd"] = "magnitude"
    n_mels: Positive = 64
    log_offset: StrictFloat = 1e-7
    audio_mean: StrictFloat = 0.0
    audio_std: Seconds = 1.0
    frames: Positive = 3
    frame_height: Positive = 224
    frame_width: Positive = 224
    frame_mean: Three = IMAGENET_MEAN
    frame_std: Three = IMAGENET_STD

    def __post_init__(self) -> None:
        """What one field alone cannot say."""
        if self.win_length is not None and not 0 < self.win_length <= self.n_fft:
            raise ConfigError(f"spec.win_length: must be in (0, n_fft={self.n_fft}], got {self.win_length}")
        if min(self.frame_std) <= 0:
            raise ConfigError("spec.frame_mean / spec.frame_std: need 3 values each, std > 0")
        if not self.center and self.audio_samples < self.n_fft:
            raise ConfigError("spec.window_seconds: window shorter than n_fft with center=false")

    # ---- derived numbers -------------------------------------------------------------------
    @property
    def audio_samples(self) -> int:
        """Samples in one window at `sample_rate`."""
        return int(round(self.sample_rate * self.window_seconds))

    @property
    def spectrogram_shape(self) -> tuple[int, int]:
        """(F, T) of the spectrogram for one window."""
        bins = self.n_mels if self.audio_feature == "mel" else self.n_fft // 2 + 1
        if self.center:
            steps = 1 + self.audio_samples // self.hop_length
        else:
            steps = 1 + (self.audio_samples - self.n_fft) // self.hop_length
        return bins, steps

    @property
    def frames_shape(self) -> tuple[int, int, int, int]:
        """(3, N, H, W) of the frame tensor for one window."""
        return 3, self.frames, self.frame_height, self.frame_width

    def frame_offsets(self) -> list[float]:
        """Seconds from the window start at which frames are taken: evenly spaced, centred in bins."""
        step = self.window_seconds / self.frames
        return [(i + 0.5) * step for i in range(self.frames)]

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["frame_mean"] = list(self.frame_mean)
        d["frame_std"] = list(self.frame_std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> "ClipSpec":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of spec keys, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown spec key; known keys: {', '.join(known)}")
        try:
            return cls(**data)
        except ValidationError as exc:
            raise ConfigError(describe(exc, cls, prefix=where)) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ClipSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"spec: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def digest(self) -> str:
        """Stable 16-hex-digit hash of every number; keys feature caches and engines."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> "ClipSpec":
        return dataclasses.replace(self, **changes)


# The paper's settings (shared/reference/mlb-method.md §3) and our CPU-sized synthetic one.
PRESETS: dict[str, ClipSpec] = {
    # CREMA-D: 22.05 kHz, 3 s tiled, n_fft 512 hop 353, log|S| -> 257 x 188; 3 frames at 224.
    "cremad": ClipSpec(sample_rate=22050, window_seconds=3.0, short_audio="tile", n_fft=512,
                       hop_length=353, frames=3),
    # AVE: 16 kHz, 10 s event segment tiled, scipy spectrogram (Tukey(0.25), nperseg 512,
    # noverlap 353 -> hop 159, no centring, PSD density) -> 257 x 1004; 4 frames.
    "ave": ClipSpec(sample_rate=16000, window_seconds=10.0, short_audio="tile", n_fft=512,
                    hop_length=159, window="tukey", center=False, scale="psd", frames=4),
    # UCF101: 16 kHz, first 3 s (padded when shorter), n_fft 512 hop 353 -> 257 x 136; 4 frames.
    "ucf101": ClipSpec(sample_rate=16000, window_seconds=3.0, short_audio="pad", n_fft=512,
                       hop_length=353, frames=4),
    # Synthetic CPU set: 2 s, 64 log-mel bins, 4 frames at 64 px.
    "synth": ClipSpec(sample_rate=16000, window_seconds=2.0, short_audio="tile", audio_feature="mel",
                      n_fft=512, hop_length=256, n_mels=64, frames=4, frame_height=64, frame_width=64),
}


def preset(name: str) -> ClipSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"spec preset {name!r}: unknown; choose one of {', '.join(PRESETS)}") from None
