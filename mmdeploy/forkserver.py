"""Imported last by the decode workers' forkserver (`mmdeploy.preload.PRELOAD`), never by anything else.

It readies the process that every decode worker is forked from, once:
- one features computation (numpy: the workers never import torch) on a silent black window, so each
  worker does not pay the first call's setup (filter and resize weights, numpy's FFT plans) on its first file,
- `gc.freeze()`: mmdeploy.media collects garbage before every fork (`os.register_at_fork`); frozen objects
  are skipped, so a fork costs milliseconds.
"""
import gc

import numpy as np

from mmdeploy.jobs import clip_features
from mmdeploy.media import Clip
from mmdeploy.spec import preset

_spec = preset("synth")
clip_features(Clip(path="warm-up", start=0.0, seconds=_spec.window_seconds,
                   audio=np.zeros(_spec.audio_samples, np.float32),
                   frames=np.zeros((_spec.frames, 64, 64, 3), np.uint8)), _spec)
gc.collect()
gc.freeze()
