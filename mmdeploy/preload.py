"""What the decode workers' forkserver imports before it forks any worker (`PRELOAD`, in order), and `start()`.

`mmdeploy.isolate` uses the list; this module imports nothing, so a command can spawn the forkserver first
thing (`start()`), before its own imports: a cold `mmdeploy classify` then overlaps the worker's start-up (a
Python process importing numpy, PyAV and the feature code) with everything else it does.
- mmdeploy.workerenv first: one BLAS / OpenMP thread per worker, set before numpy loads;
- no torch: features are numpy (mmdeploy.numpy_features);
- mmdeploy.forkserver last: warms up the feature code and freezes the heap (see its docstring).
"""
from __future__ import annotations

PRELOAD = ["mmdeploy.workerenv", "mmdeploy.isolate", "mmdeploy.jobs", "mmdeploy.numpy_features", "mmdeploy.media",
           "av", "mmdeploy.forkserver"]


def start() -> None:
    """Spawn the forkserver now (returns at once: the process imports PRELOAD on its own; the first worker
    request waits for it). A no-op when it already runs."""
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()
