"""Joining (or starting) Ray and the Ray Data settings of our runs: shared by `mmdeploy batch --engine ray`
and `mmdeploy data cache --engine ray`.

A local instance (no address) is this machine's alone: every Ray process listens on 127.0.0.1 only, and
Ray's token authentication is on (Ray 2.59+ makes a token for a new local instance, in ~/.ray/auth_token,
unless RAY_AUTH_MODE says otherwise). Ray rewrites a node address of 127.0.0.1 to the machine's network
address unless it runs in its single-machine mode (the default on macOS and Windows,
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), so `connect` turns that mode on for a local instance; then the GCS,
the raylet and the workers bind loopback (`ss -ltnp` shows 127.0.0.1 only).

Joining a cluster (`--address`): the cluster's own settings decide where it listens (a cluster on this
machine's loopback, `--address 127.0.0.1:PORT`, is joined in the same single-machine mode); with token
authentication on (RAY_AUTH_MODE=token on every node, see the README), pass its token with `token_file`
(`--ray-token-file`; Ray also reads RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path

from mmdeploy.errors import ConfigError, MmdeployError

OBJECT_STORE_MB = 512  # what a run's blocks may hold in the object store at once (backpressure)
LOOPBACK = "127.0.0.1"
SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps 127.0.0.1 as the node address


def local_only() -> None:
    """Ray's single-machine mode for this process and the Ray processes it starts (see the module docstring);
    before `import ray` where possible, and on Ray's constant when it was imported already."""
    import sys

    os.environ[SINGLE_MACHINE] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def on_loopback(address: str) -> bool:
    """Whether a cluster address names this machine's loopback (127.x.x.x, localhost, ::1)."""
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")


def use_token(token_file: str | os.PathLike) -> None:
    """Authenticate to the cluster with the token in `token_file` (Ray's RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH)."""
    path = Path(token_file).expanduser()
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"--ray-token-file {path}: cannot read it ({exc.strerror or exc}); pass the file "
                          "`ray get-auth-token` wrote on the head node") from None
    if not token:
        raise ConfigError(f"--ray-token-file {path}: the file is empty; pass the cluster's token")
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over the file
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(path.resolve()))


def reread_auth() -> None:
    """Make an already imported Ray read RAY_AUTH_* again (it reads them once, and caches the token): the
    token of a previous instance or cluster in this process must not be the one sent to the next."""
    import sys

    raylet = sys.modules.get("ray._raylet")
    if raylet is not None:
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()


def connect(address: str | None = None, cpus: int | None = None, temp_dir: str | None = None,
            attempts: int = 2, token_file: str | os.PathLike | None = None) -> float:
    """Join the cluster at `address` (a `ray start --head` address, or "auto"; `token_file`: its auth
    token), or start a local Ray instance on 127.0.0.1 with `cpus` logical CPUs (its files under
    `temp_dir`, default Ray's /tmp/ray); no-op when Ray is already initialised. Returns seconds taken."""
    if token_file is not None:
        use_token(token_file)
    if not address or on_loopback(address):
        local_only()
    reread_auth()
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
        with ray_stderr() as said:
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=cpus, _node_ip_address=LOOPBACK, **kwargs)
                error = None
            except Exception as exc:  # noqa: BLE001 - ray.init raises plain Exception for a start-up timeout
                ray.shutdown()
                error = exc
        if error is None:
            break
        if attempt == attempts or address:
            where = f"join the Ray cluster at {address}" if address else "start a local Ray instance"
            fix = ("check `ray status` on the head node, and --ray-token-file if it uses token authentication"
                   if address else "retry, or start one with `ray start --head` and pass --address auto")
            why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            core = last_core_line("".join(said))
            why += f"; Ray: {core}" if core and core not in why else ""
            raise MmdeployError(f"--address {address or '(none)'}: cannot {where} ({why[:400]}); {fix}") from None
    return time.perf_counter() - t0


@contextlib.contextmanager
def ray_stderr():
    """While Ray starts or joins, what its core writes to this process's stderr (a warning per retry, once a
    second, while it waits for a cluster that refuses it) goes to a temporary file; yields a list that holds
    that text once the block is left. The caller reports a failure in one line (`last_core_line`)."""
    said: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as spool:
        os.dup2(spool.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            spool.seek(0)
            said.append(spool.read().decode("utf-8", "replace"))


def last_core_line(text: str) -> str | None:
    """The message of the last warning or error line Ray's core logged ("[date W pid tid] file.cc:N: message")."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("[") and "] " in line and (" W " in line or " E " in line):
            return line.split("] ", 1)[1].split(": ", 1)[-1].strip()[:200]
    return None


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
