"""Joining (or starting) Ray and the Ray Data settings of our runs: shared by `mmdeploy batch --engine ray`
and `mmdeploy data cache --engine ray`."""
from __future__ import annotations

import logging
import time

from mmdeploy.errors import MmdeployError

OBJECT_STORE_MB = 512  # what a run's blocks may hold in the object store at once (backpressure)


def connect(address: str | None = None, cpus: int | None = None, temp_dir: str | None = None,
            attempts: int = 2) -> float:
    """Join the cluster at `address` (a `ray start --head` address, or "auto"), or start a local Ray
    instance with `cpus` logical CPUs (its files under `temp_dir`, default Ray's /tmp/ray); no-op when
    Ray is already initialised. Returns seconds taken."""
    import ray

    t0 = time.perf_counter()
    if ray.is_initialized():
        return 0.0
    logging.getLogger("ray").setLevel(logging.ERROR)  # our progress line and summary are the output
    kwargs = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False,
              "configure_logging": True}
    if temp_dir:
        kwargs["_temp_dir"] = temp_dir
    for attempt in range(1, attempts + 1):  # a loaded machine can miss Ray's fixed 30-s raylet start-up wait
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=cpus, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - ray.init raises plain Exception for a start-up timeout
            ray.shutdown()
            if attempt == attempts or address:
                where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
                fix = ("check `ray status` on the head node" if address
                       else "retry, or start one with `ray start --head` and pass --address auto")
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise MmdeployError(f"--address {address or '(none)'}: cannot {where} ({why}); {fix}") from None
    return time.perf_counter() - t0


def configure_data(object_store_mb: int = OBJECT_STORE_MB) -> None:
    """Ray Data settings for our runs: no progress bars of its own, bounded object store, dropped blocks
    instead of a failed run."""
    import ray.data
    from ray.data import DataContext
    from ray.data._internal.execution.interfaces import ExecutionResources

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.max_errored_blocks = -1  # a dead batch is dropped, never the run; its files are retried below
    ctx.execution_options.resource_limits = ExecutionResources.for_limits(
        object_store_memory=object_store_mb * 1024 * 1024)
    ctx.execution_options.preserve_order = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    del ray
