"""The synthetic set's imbalance knobs: the audio SNR shift and train-label noise."""
from __future__ import annotations

import numpy as np
import pytest

from mmdeploy.data.manifest import read_manifest
from mmdeploy.data.synth import generate, noisy_labels, render_audio
from mmdeploy.errors import ConfigError


def test_audio_snr_shift_moves_the_mix_towards_the_clean_tone():
    """Same random stream, larger shift: the mix correlates more with the (nearly) noise-free rendering."""
    def mix(shift):
        return render_audio("whistle", 0.5, 16000, np.random.default_rng(3), snr_shift_db=shift)

    clean = mix(40.0)
    corr = {s: abs(np.corrcoef(mix(s), clean)[0, 1]) for s in (-12.0, 0.0, 12.0)}
    assert corr[-12.0] < corr[0.0] < corr[12.0] < 1.0


def test_label_noise_touches_train_labels_only_at_the_asked_rate():
    labels = [i % 8 for i in range(4000)]
    splits = ["train" if i % 10 < 7 else ("val" if i % 10 < 9 else "test") for i in range(4000)]
    noisy = noisy_labels(labels, splits, 8, 0.2, seed=0)
    changed = [a != b for a, b in zip(labels, noisy)]
    train = [c for c, s in zip(changed, splits) if s == "train"]
    assert not any(c for c, s in zip(changed, splits) if s != "train")
    assert 0.18 < sum(train) / len(train) < 0.22            # flips always land on another class
    assert noisy_labels(labels, splits, 8, 0.0, 0) == labels


def test_generate_with_label_noise_keeps_the_clips_and_clean_eval_splits(tmp_path):
    plain = read_manifest(generate(tmp_path / "plain", clips=24, seed=1, classes=4, size=16, workers=1)).items
    noisy = read_manifest(generate(tmp_path / "noisy", clips=24, seed=1, classes=4, size=16, workers=1,
                                   label_noise=0.5)).items
    assert [i.sha256 for i in plain] == [i.sha256 for i in noisy]            # same bytes
    assert [i.split for i in plain] == [i.split for i in noisy]
    assert all(a.label == b.label for a, b in zip(plain, noisy) if a.split != "train")
    assert any(a.label != b.label for a, b in zip(plain, noisy) if a.split == "train")
    with pytest.raises(ConfigError, match="label_noise"):
        generate(tmp_path / "bad", clips=8, classes=4, size=16, label_noise=1.0)
    with pytest.raises(ConfigError, match="audio_snr_db"):
        generate(tmp_path / "bad", clips=8, classes=4, size=16, audio_snr_db=99)
