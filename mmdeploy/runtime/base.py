"""The Predictor interface every backend implements: numpy features in, softmax probabilities out."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from mmdeploy.spec import ClipSpec

INPUTS = ("audio", "video")
OUTPUTS = ("fused", "audio", "video")
OUTPUT_NAMES = tuple(f"{o}_logits" for o in OUTPUTS)  # ONNX/TensorRT tensor names (must differ from inputs)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor(ABC):
    """`predict(audio [B,1,F,T], video [B,3,N,H,W])` -> {"fused", "audio", "video"}: probabilities [B,C].

    `backend` names what runs (e.g. "onnxruntime-cpu", "torch-cpu"); `classes` and `spec` come from the
    bundle (or the ONNX metadata), so callers compute features with exactly the training spec. Batches
    larger than `max_batch` (an engine's profile) run in chunks."""

    backend: str
    classes: list[str]
    spec: ClipSpec
    max_batch: int | None = None
    skipped: dict[str, str] = {}  # set by load_predictor: backends `auto` passed over, with the reason
    why: str = ""  # set by load_predictor: why this backend (for auto: the export's timing record, when it decided)

    def predict(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        return {k: softmax(v) for k, v in self.logits(audio, video).items()}

    def logits(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        audio, video = self._check(audio, video)
        step = self.max_batch or len(audio)
        parts = [self._logits(audio[i:i + step], video[i:i + step]) for i in range(0, len(audio), step)]
        return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in OUTPUTS}

    @abstractmethod
    def _logits(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        """Raw logits [B,C] per output for one chunk of contiguous float32 inputs."""

    def _check(self, audio: np.ndarray, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        want_a = (1, *self.spec.spectrogram_shape)
        want_v = tuple(self.spec.frames_shape)
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        video = np.ascontiguousarray(video, dtype=np.float32)
        if audio.ndim != 4 or tuple(audio.shape[1:]) != want_a:
            raise ValueError(f"audio: expected [B, {', '.join(map(str, want_a))}], got {list(audio.shape)}")
        if video.ndim != 5 or tuple(video.shape[1:]) != want_v:
            raise ValueError(f"video: expected [B, {', '.join(map(str, want_v))}], got {list(video.shape)}")
        if len(audio) != len(video) or len(audio) == 0:
            raise ValueError(f"audio and video need the same batch size >= 1, got {len(audio)} and {len(video)}")
        return audio, video

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self.backend} classes={len(self.classes)}>"
