"""AVDataset: item shapes and dtypes, zeros + flags for an absent modality, deterministic train-only augmentation."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mmdeploy.data.dataset import AVDataset
from mmdeploy.data.manifest import Item, read_manifest, write_manifest
from mmdeploy.data.synth import generate
from mmdeploy.errors import ConfigError


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, media_dir):
    """4 synthetic clips (2 classes) + a video-only and an audio-only real file, all in the train split."""
    root = tmp_path_factory.mktemp("ds")
    synth = read_manifest(generate(root / "synth", clips=4, seed=0, classes=2, workers=1))
    items = [Item(it.path, it.label, "train") for it in synth.items[:3]] + [
        Item(synth.items[3].path, synth.items[3].label, "val"),
        Item(str(media_dir / "bbb_h264_100subtitle_tracks_noaudio.mp4"), synth.classes[0], "test"),
        Item(str(media_dir / "espeak_en_speech.wav"), synth.classes[1], "test")]
    return read_manifest(write_manifest(root / "mixed.csv", items, synth.classes))


def test_items_have_the_contract_shapes_and_types(manifest, tiny_spec, tmp_path):
    ds = AVDataset(manifest, "train", tiny_spec, tmp_path)
    assert len(ds) == 3
    item = ds[0]
    assert item["audio"].shape == (1, *tiny_spec.spectrogram_shape) and item["audio"].dtype == torch.float32
    assert item["video"].shape == tiny_spec.frames_shape and item["video"].dtype == torch.float32
    assert item["has_audio"] is True and item["has_video"] is True
    assert [ds[i]["label"] for i in range(3)] == [manifest.label_index(it.label) for it in ds.items]
    assert item["video"].abs().sum() > 0 and item["audio"].abs().sum() > 0


def test_absent_modality_is_zeros_with_its_flag_off(manifest, tiny_spec, tmp_path):
    no_audio, no_video = AVDataset(manifest, "test", tiny_spec, tmp_path)
    assert no_audio["has_audio"] is False and no_audio["has_video"] is True
    assert no_audio["audio"].shape == (1, *tiny_spec.spectrogram_shape) and not no_audio["audio"].any()
    assert no_video["has_video"] is False and no_video["has_audio"] is True
    assert no_video["video"].shape == tiny_spec.frames_shape and not no_video["video"].any()
    assert no_audio["label"] == 0 and no_video["label"] == 1


def test_augmentation_is_train_only_deterministic_flip_and_shift(manifest, tiny_spec, tmp_path):
    plain = AVDataset(manifest, "train", tiny_spec, tmp_path)
    aug = AVDataset(manifest, "train", tiny_spec, tmp_path, augment=True, seed=7)
    assert not AVDataset(manifest, "val", tiny_spec, tmp_path, augment=True).augment
    flips, shifts = set(), set()
    for epoch in range(6):
        aug.set_epoch(epoch)
        for i in range(len(aug)):
            a, b = plain[i], aug[i]
            flipped = torch.equal(b["video"], a["video"].flip(-1))
            assert flipped or torch.equal(b["video"], a["video"])
            shift = next(s for s in range(-12, 13) if torch.equal(b["audio"], a["audio"].roll(s, dims=-1)))
            assert abs(shift) <= int(0.1 * a["audio"].shape[-1])
            flips.add(flipped)
            shifts.add(shift)
    assert flips == {True, False} and len(shifts) > 3
    twin = AVDataset(manifest, "train", tiny_spec, tmp_path, augment=True, seed=7)
    twin.set_epoch(5)
    assert all(torch.equal(twin[i]["audio"], aug[i]["audio"]) and torch.equal(twin[i]["video"], aug[i]["video"])
               for i in range(len(aug)))


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batches_match_across_worker_counts(manifest, tiny_spec, tmp_path, workers):
    ds = AVDataset(manifest, "train", tiny_spec, tmp_path, augment=True, seed=1)
    ds.set_epoch(3)
    expected = [ds[i] for i in range(len(ds))]
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=workers)))
    assert batch["audio"].shape == (3, 1, *tiny_spec.spectrogram_shape)
    assert batch["label"].dtype == torch.int64 and batch["has_video"].dtype == torch.bool
    assert torch.equal(batch["audio"], torch.stack([e["audio"] for e in expected]))
    assert torch.equal(batch["video"], torch.stack([e["video"] for e in expected]))


def test_empty_split_and_skipped_items(manifest, tiny_spec, tmp_path):
    ds = AVDataset(manifest, "test", tiny_spec, tmp_path, skip=manifest.split("test")[:1])
    assert len(ds) == 1 and ds[0]["has_video"] is False
    with pytest.raises(ConfigError, match="no usable items in split 'val'"):
        AVDataset(manifest, "val", tiny_spec, tmp_path, skip=manifest.split("val"))
