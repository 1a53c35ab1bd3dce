import json

import pytest

from mmdeploy.errors import ConfigError
from mmdeploy.spec import PRESETS, ClipSpec, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip(name):
    spec = PRESETS[name]
    assert ClipSpec.from_json(spec.to_json()) == spec
    assert ClipSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).digest() == spec.digest()


def test_paper_shapes():
    assert preset("cremad").spectrogram_shape == (257, 188)
    assert preset("ave").spectrogram_shape == (257, 1004)
    assert preset("ucf101").spectrogram_shape == (257, 136)
    assert preset("cremad").audio_samples == 66150
    assert preset("ave").frames_shape == (3, 4, 224, 224)


def test_digest_changes_with_any_number():
    spec = preset("synth")
    assert spec.replace(hop_length=255).digest() != spec.digest()
    assert spec.replace(frame_mean=(0.5, 0.5, 0.5)).digest() != spec.digest()


def test_frame_offsets_inside_window():
    offs = preset("cremad").frame_offsets()
    assert offs == pytest.approx([0.5, 1.5, 2.5])


@pytest.mark.parametrize("data,needle", [
    ({"sampel_rate": 16000}, "sampel_rate"),
    ({"sample_rate": "fast"}, "sample_rate"),
    ({"short_audio": "loop"}, "short_audio"),
    ({"frames": 0}, "frames"),
    ({"center": 1}, "center"),
])
def test_errors_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle):
        ClipSpec.from_dict(data)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="nope"):
        preset("nope")
