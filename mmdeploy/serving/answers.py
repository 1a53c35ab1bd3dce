"""The model to serve, errors as JSON answers, readiness, and a timeline pulled from threads."""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Callable

from mmdeploy.errors import BundleError, MmdeployError
from mmdeploy.serving.remote import ModelCallError
from mmdeploy.settings import Settings

READY_TIMEOUT_S = 5.0  # one readiness probe of the model service

log = logging.getLogger("mmdeploy.service")


def pin(cpus: list[int]) -> None:
    """Run this process (and what it starts later) on `cpus`, where the OS allows it."""
    if hasattr(os, "sched_setaffinity") and cpus and set(cpus) != set(os.sched_getaffinity(0)):
        os.sched_setaffinity(0, cpus)


def in_store(tag: str) -> bool:
    """Whether the BentoML model store holds `tag`."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(tag)
    except NotFound:
        return False
    return True


def model_path(settings: Settings, stored: Callable[[], str] | None = None) -> Path:
    """The bundle folder to serve: MMDEPLOY_MODEL when set, else the store model `settings.model_tag`
    (`stored` resolves it the service's way, through its BentoModel attribute, so a Bento finds its own)."""
    if settings.model:
        return Path(settings.model).resolve()
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(stored() if stored else bentoml.models.get(settings.model_tag).path)
    except NotFound:
        raise BundleError(f"model {settings.model_tag!r} is not in the BentoML model store "
                          f"({os.environ.get('BENTOML_HOME', '~/bentoml')}); run `mmdeploy export RUN --bento` "
                          "or set MMDEPLOY_MODEL=RUN") from None


class Pull:
    """Pull items of a blocking iterator (a timeline generator) in `executor` threads, one at a time.
    `close()` closes the iterator (which kills its decoder process) at once, or as soon as the pull in
    progress returns; call it when the client goes away."""

    def __init__(self, iterator, executor):
        self.iterator, self.executor = iterator, executor
        self.pending = None
        self.closed = False

    async def next(self, default=None):
        self.pending = self.executor.submit(next, self.iterator, default)
        return await asyncio.wrap_future(self.pending)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.pending is not None and not self.pending.done():
            self.pending.add_done_callback(lambda _: self._close())
        else:
            self._close()

    def _close(self) -> None:
        close = getattr(self.iterator, "close", None)
        if close is not None:
            try:
                close()
            except ValueError:  # "generator already executing": the done callback closes it
                pass


class NotReady(Exception):
    """The model service is not loaded or not answering; `cause` says why (503)."""


class ReadyLog:
    """Logs why the service is not ready, once per distinct cause (probes come every few seconds)."""

    def __init__(self):
        self.last: str | None = None

    def not_ready(self, cause: str) -> None:
        if cause != self.last:
            log.error("not ready: %s", cause)
            self.last = cause

    def ready(self) -> None:
        if self.last is not None:
            log.info("ready (was: %s)", self.last)
        self.last = None


def fail(ctx, status: int, message: str):
    """A JSON response {"error": message} with `status` (also set on the Context: BentoML gives an API's
    response the Context's status). 503s are logged with their cause."""
    from starlette.responses import JSONResponse

    if status >= 500:
        log.warning("%d: %s", status, message)
    ctx.response.status_code = status
    return JSONResponse({"error": message}, status_code=status)


def explain(exc: BaseException, name: str, timeout_s: float) -> tuple[int, str]:
    """A user-facing exception -> (4xx/503 status, message); anything else is re-raised (a real 500)."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return 422, f"{name}: decoding took longer than {timeout_s:g} s (MMDEPLOY_DECODE_TIMEOUT_S); send a shorter clip"
    if isinstance(exc, (ModelCallError, NotReady)):
        return 503, str(exc)
    if isinstance(exc, MmdeployError):
        return 422, f"{name}: {getattr(exc, 'reason', None) or exc}"
    raise exc


def upload_name(request) -> str:
    """The client's file name of the upload (recorded by UploadGuard), else 'upload'."""
    return request.scope.get("state", {}).get("mmdeploy_upload") or "upload"


def one_copy_of_server_logs() -> None:
    """BentoML's server logging gives `uvicorn.error` a handler of its own and also lets its records reach the
    root logger's handler (the same stream): every line uvicorn logs ("Invalid HTTP request received.",
    "Exception in ASGI application" and its traceback) came out twice. Call in the worker, after BentoML
    configured logging (service import time): the logger keeps its own handler and stops passing records up."""
    server = logging.getLogger("uvicorn.error")
    if server.handlers and logging.getLogger().handlers:
        server.propagate = False
