"""Imported last by the decode workers' forkserver (`mmdeploy.isolate.PRELOAD`), never by anything else.

It readies the process that every decode worker is forked from, once:
- one torch thread (workers decode one file each; and no OpenMP pool exists when the server forks),
- one features computation on a silent black window, so each worker does not pay torch's lazy first-call
  setup (about 1 s on a loaded 2-core machine) on its first file,
- `gc.freeze()`: mmdeploy.media collects garbage before every fork (`os.register_at_fork`); with torch loaded a
  full collection takes 0.1-0.5 s, and frozen objects are skipped, so a fork costs milliseconds.
"""
import gc

import numpy as np
import torch

from mmdeploy.jobs import clip_features
from mmdeploy.media import Clip
from mmdeploy.spec import preset

torch.set_num_threads(1)
_spec = preset("synth")
clip_features(Clip(path="warm-up", start=0.0, seconds=_spec.window_seconds,
                   audio=np.zeros(_spec.audio_samples, np.float32),
                   frames=np.zeros((_spec.frames, 64, 64, 3), np.uint8)), _spec)
gc.collect()
gc.freeze()
