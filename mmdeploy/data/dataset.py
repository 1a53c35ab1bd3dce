"""AVDataset: one manifest split as cached feature tensors, with zeros and flags for an absent modality.

Items: dict(audio [1,F,T] float32, video [3,N,H,W] float32, label int (index in manifest.classes),
has_audio bool, has_video bool). With `augment=True` on the train split, each item gets the same
horizontal flip on all its frames (p = 0.5) and a circular time shift of the spectrogram of up to
10 % of its length; the draw depends only on (seed, epoch, index), so it is the same with any
DataLoader num_workers. Call `set_epoch` before each epoch's iterator (workers copy the dataset
when the iterator starts). Val/test splits are never augmented.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmdeploy.data.cache import FeatureCache
from mmdeploy.data.manifest import Item, Manifest
from mmdeploy.errors import ConfigError
from mmdeploy.spec import ClipSpec

MAX_SHIFT = 0.1


class AVDataset(Dataset):
    def __init__(self, manifest: Manifest, split: str, spec: ClipSpec, cache_root: str | Path,
                 augment: bool = False, seed: int = 0, skip: Iterable[Item] = ()):
        skipped = set(skip)
        self.items = [it for it in manifest.split(split) if it not in skipped]
        if not self.items:
            raise ConfigError(f"{manifest.path}: no usable items in split {split!r}")
        self.labels = [manifest.label_index(it.label) for it in self.items]
        self.spec = spec
        self.cache = FeatureCache(cache_root, spec)
        self.augment = augment and split == "train"
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, object]:
        audio, video = self.cache.get(self.items[index])
        has_audio, has_video = audio is not None, video is not None
        if audio is None:
            audio = torch.zeros(1, *self.spec.spectrogram_shape)
        if video is None:
            video = torch.zeros(self.spec.frames_shape)
        if self.augment:
            audio, video = self._augment(audio, video, index)
        return {"audio": audio, "video": video, "label": self.labels[index],
                "has_audio": has_audio, "has_video": has_video}

    def _augment(self, audio: torch.Tensor, video: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(state))
        if torch.rand((), generator=gen) < 0.5:  # numpy: torch.flip goes multi-threaded at this size
            video = torch.from_numpy(np.ascontiguousarray(video.numpy()[..., ::-1]))
        reach = int(audio.shape[-1] * MAX_SHIFT)
        shift = int(torch.randint(-reach, reach + 1, (), generator=gen))
        return audio.roll(shift, dims=-1), video
