"""What the BentoML service (mmdeploy/service.py) is made of, kept here so the service stays thin.

- `Settings`: every knob, read from MMDEPLOY_* environment variables; the request bounds (window, hop,
  windows per request, form fields, file name length) next to it.
- `model_path`: the bundle to serve: MMDEPLOY_MODEL (a run folder) wins, else the BentoML model store tag.
- `pack` / `unpack`: a batch of (spectrogram, frames) as ONE float32 array [B, D], because a batchable
  BentoML API takes exactly one parameter; the model service splits it back with the bundle's spec.
- `RemotePredictor`: looks like a runtime Predictor to `mmdeploy.classify`, but each `predict` goes to
  the batchable model service, so concurrent requests share model calls and the result JSON is built
  by classify's own functions (one result shape for the CLI and HTTP).
- `UploadGuard`: ASGI middleware for the upload routes: 413 before reading a body whose Content-Length is
  over the limit, 413 while streaming one that grows past it (chunked), 4xx for a missing `video` file
  field or a body that is not multipart, 400 for more than MAX_FIELDS fields or a file name with control
  characters or over MAX_NAME_BYTES; the body is spooled to disk (bounded memory) and replayed.
- `Pull`: a blocking iterator (a timeline) pulled from a thread pool, closed (its decoder killed) as soon as
  the client goes away.
- `NotReady` / `ReadyLog`: readiness that never raises or hangs; each new cause is logged once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import ntpath
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmdeploy.errors import BundleError, ConfigError, MmdeployError
from mmdeploy.spec import ClipSpec

FIELD = "video"  # the multipart field that carries the upload
DEFAULT_TAG = "av-classifier:latest"
SPOOL_BYTES = 1 << 20  # request bodies above this spill from memory to a temporary file
MAX_FIELDS = 16  # multipart parts per request (the API takes 3: video, window, hop)
MAX_FIELD_BYTES = 1000  # a form field other than the file
NUMBER_FIELDS = ("window", "hop")
MAX_NAME_BYTES = 255  # an upload's file name (UTF-8), as most file systems allow
MIN_WINDOW_S = 0.1  # /timeline window and hop bounds (seconds); 0 means "the model's window"
MAX_WINDOW_S = 600.0
MIN_HOP_S = 0.1
READY_TIMEOUT_S = 5.0  # one readiness probe of the model service

log = logging.getLogger("mmdeploy.service")


def _env(name: str, default: str, cast: Callable[[str], Any]) -> Any:
    raw = os.environ.get(name, default)
    try:
        return cast(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r}: expected a value like {default}") from None


def _flag(text: str) -> bool:
    if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(text)
    return text.lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    model: str | None = None  # MMDEPLOY_MODEL: a bundle folder; wins over the store tag
    tag: str = DEFAULT_TAG  # MMDEPLOY_MODEL_TAG: BentoML model store tag
    backend: str = "auto"  # MMDEPLOY_BACKEND: as `mmdeploy classify --backend`
    max_upload_mb: float = 100.0  # MMDEPLOY_MAX_UPLOAD_MB
    decode_timeout_s: float = 60.0  # MMDEPLOY_DECODE_TIMEOUT_S: per file (/classify) or per window (/timeline)
    decode_threads: int = 0  # MMDEPLOY_DECODE_THREADS: decode processes per API worker (0: the decode cores)
    model_cores: int = -1  # MMDEPLOY_MODEL_CORES: cores the model worker is pinned to (-1: 1 above 2 cores, else 0)
    batching: bool = True  # MMDEPLOY_BATCHING: adaptive batching of model calls across requests
    max_batch: int = 32  # MMDEPLOY_MAX_BATCH: windows per model call
    max_latency_ms: int = 10000  # MMDEPLOY_MAX_LATENCY_MS: BentoML answers 503 for a call queued longer
    api_workers: int = 1  # MMDEPLOY_API_WORKERS: decoding processes (API service workers)
    model_workers: int = 1  # MMDEPLOY_MODEL_WORKERS: inference processes (model service workers)
    timeout_s: int = 600  # MMDEPLOY_REQUEST_TIMEOUT_S: whole request, including a streamed timeline
    max_windows: int = 1000  # MMDEPLOY_MAX_WINDOWS: windows per /timeline request

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(model=os.environ.get("MMDEPLOY_MODEL") or None,
                   tag=_env("MMDEPLOY_MODEL_TAG", DEFAULT_TAG, str),
                   backend=_env("MMDEPLOY_BACKEND", "auto", str),
                   max_upload_mb=_env("MMDEPLOY_MAX_UPLOAD_MB", "100", float),
                   decode_timeout_s=_env("MMDEPLOY_DECODE_TIMEOUT_S", "60", float),
                   decode_threads=_env("MMDEPLOY_DECODE_THREADS", "0", int),
                   model_cores=_env("MMDEPLOY_MODEL_CORES", "-1", int),
                   batching=_env("MMDEPLOY_BATCHING", "1", _flag),
                   max_batch=_env("MMDEPLOY_MAX_BATCH", "32", int),
                   max_latency_ms=_env("MMDEPLOY_MAX_LATENCY_MS", "10000", int),
                   api_workers=_env("MMDEPLOY_API_WORKERS", "1", int),
                   model_workers=_env("MMDEPLOY_MODEL_WORKERS", "1", int),
                   timeout_s=_env("MMDEPLOY_REQUEST_TIMEOUT_S", "600", int),
                   max_windows=_env("MMDEPLOY_MAX_WINDOWS", "1000", int))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    def cores(self) -> tuple[list[int], list[int]]:
        """(decode cores, model cores): the model worker is pinned to the last `model_cores` of this
        process's cores and decoding to the rest; with no model cores, both share every core."""
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
        n = self.model_cores if self.model_cores >= 0 else (1 if len(cpus) > 2 else 0)
        if n == 0 or n >= len(cpus):
            return cpus, cpus
        return cpus[:-n], cpus[-n:]

    def decode_processes(self) -> int:
        return self.decode_threads or len(self.cores()[0])


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
    """The bundle folder to serve: MMDEPLOY_MODEL when set, else the store model `settings.tag`
    (`stored` resolves it the service's way, through its BentoModel attribute, so a Bento finds its own)."""
    if settings.model:
        return Path(settings.model).resolve()
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(stored() if stored else bentoml.models.get(settings.tag).path)
    except NotFound:
        raise BundleError(f"model {settings.tag!r} is not in the BentoML model store "
                          f"({os.environ.get('BENTOML_HOME', '~/bentoml')}); run `mmdeploy export RUN --bento` "
                          "or set MMDEPLOY_MODEL=RUN") from None


# ---- one array per batch -----------------------------------------------------------------------
def pack(audio: np.ndarray, video: np.ndarray) -> np.ndarray:
    """audio [B,1,F,T] + video [B,3,N,H,W] -> float32 [B, 1*F*T + 3*N*H*W]."""
    b = len(audio)
    return np.concatenate([np.asarray(audio, np.float32).reshape(b, -1),
                           np.asarray(video, np.float32).reshape(b, -1)], axis=1)


def unpack(rows: np.ndarray, spec: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of `pack` for `spec`'s shapes; a wrong width is a ValueError naming both."""
    a_shape, v_shape = (1, *spec.spectrogram_shape), tuple(spec.frames_shape)
    a_size = int(np.prod(a_shape))
    width = a_size + int(np.prod(v_shape))
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(f"packed windows: expected [B, {width}] for this model's spec, got {list(rows.shape)}")
    b = len(rows)
    return (np.ascontiguousarray(rows[:, :a_size].reshape(b, *a_shape)),
            np.ascontiguousarray(rows[:, a_size:].reshape(b, *v_shape)))


HEADS = ("fused", "audio", "video")


def stack_probs(probs: dict[str, np.ndarray]) -> np.ndarray:
    """{"fused","audio","video"}: [B,C] -> [B, 3, C] float32."""
    return np.stack([np.asarray(probs[h], np.float32) for h in HEADS], axis=1)


class ModelCallError(Exception):
    """The model service did not answer (overloaded past MMDEPLOY_MAX_LATENCY_MS, restarting, ...)."""


class RemotePredictor:
    """A Predictor whose `predict` calls the batchable model service from a worker thread.

    `call` is the model service's async `predict`; `loop` is the API server's event loop, where the call
    runs; `deadline` (loop.time()) stops a timed-out request at its next model call; a call unanswered
    after `timeout_s` is abandoned."""

    def __init__(self, info: dict[str, Any], call, loop: asyncio.AbstractEventLoop, deadline: float | None = None,
                 timeout_s: float = 60.0):
        self.backend = info["backend"]
        self.classes = list(info["classes"])
        self.spec = ClipSpec.from_dict(info["spec"])
        self._call, self._loop, self._deadline, self._timeout_s = call, loop, deadline, timeout_s

    def predict(self, audio: np.ndarray, video: np.ndarray) -> dict[str, np.ndarray]:
        if self._deadline is not None and self._loop.time() > self._deadline:
            raise TimeoutError("request timed out before its model call")
        future = asyncio.run_coroutine_threadsafe(self._call_once_more(pack(audio, video)), self._loop)
        try:
            out = future.result(timeout=self._timeout_s)
        except TimeoutError:
            future.cancel()
            raise ModelCallError(f"no answer from the model service in {self._timeout_s:g} s") from None
        except Exception as exc:
            raise ModelCallError(f"model service call failed ({type(exc).__name__}: {exc})") from exc
        out = np.asarray(out, np.float32)
        return {h: out[:, i] for i, h in enumerate(HEADS)}

    async def _call_once_more(self, windows: np.ndarray):
        """The call, retried once if the connection to the model service broke (a kept-alive connection
        the other side just closed); predict is a pure function, so a retry is safe."""
        import aiohttp

        try:
            return await self._call(windows)
        except aiohttp.ClientConnectionError:
            return await self._call(windows)


# ---- request bounds ---------------------------------------------------------------------------
def timeline_problem(window: float, hop: float) -> str | None:
    """Why /timeline's window/hop (seconds; 0: the model's window, hop = window) are refused, or None."""
    bounds = (f"window must be 0 (the model's) or in [{MIN_WINDOW_S:g}, {MAX_WINDOW_S:g}] s, and hop 0 (= window) "
              f"or in [{MIN_HOP_S:g}, {MAX_WINDOW_S:g}] s")
    if not (math.isfinite(window) and math.isfinite(hop)):
        return f"window={window} hop={hop}: not finite; {bounds}"
    if not (window == 0 or MIN_WINDOW_S <= window <= MAX_WINDOW_S) or \
            not (hop == 0 or MIN_HOP_S <= hop <= MAX_WINDOW_S):
        return f"window={window:g} hop={hop:g}: {bounds}"
    return None


def window_count(duration: float | None, hop: float) -> int | None:
    """Windows a timeline of a `duration`-s file takes at `hop` (None if the file states no duration)."""
    return None if duration is None else max(1, math.ceil(duration / hop))


def count_problem(duration: float | None, hop: float, max_windows: int) -> str | None:
    n = window_count(duration, hop)
    if n is not None and n > max_windows:
        return (f"hop={hop:g} s on a {duration:.1f}-s file makes {n} windows; at most {max_windows} per request "
                f"(MMDEPLOY_MAX_WINDOWS): use hop >= {duration / max_windows:.2f}")
    return None


def name_problem(filename: str) -> str | None:
    """Why an upload's file name is refused (control characters, too long), or None."""
    if any(ord(c) < 32 or ord(c) == 127 for c in filename):
        return "the upload's file name holds control characters (NUL, newline, ...); rename the file"
    if len(filename.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        return f"the upload's file name is longer than {MAX_NAME_BYTES} bytes; rename the file"
    return None


def fields_problem(parts: list[dict[str, Any]]) -> str | None:
    """Why the form fields beside the file are refused (too long; window/hop not a number), or None."""
    for part in parts:
        if "filename" in part:
            continue
        name = str(part.get("name"))[:40]
        if part["size"] > MAX_FIELD_BYTES:
            return f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes"
        if name in NUMBER_FIELDS:
            text = part.get("value", b"").decode("utf-8", "replace").strip()
            try:
                float(text)
            except ValueError:
                return f"form field {name!r}={text[:40]!r}: expected a number of seconds"
    return None


def base_name(filename: str) -> str:
    """The last component of a client's file name on any platform's separators (/ and \\), else 'upload'."""
    return ntpath.basename(filename.replace("/", "\\")).strip() or "upload"


# ---- a blocking stream pulled from threads -------------------------------------------------------
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


# ---- readiness ---------------------------------------------------------------------------------
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


# ---- errors as JSON ----------------------------------------------------------------------------
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


# ---- the upload guard (ASGI middleware) ---------------------------------------------------------
class UploadTooLarge(Exception):
    pass


class TooManyFields(Exception):
    pass


class UploadGuard:
    """Checks POST bodies on `paths` before the service parses them (see the module docstring)."""

    def __init__(self, app, paths: tuple[str, ...] = ("/classify", "/timeline"), max_bytes: int | None = None):
        self.app = app
        self.paths = paths
        self.max_bytes = max_bytes if max_bytes is not None else Settings.from_env().max_upload_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit_mb = self.max_bytes / (1 << 20)
        too_large = (413, f"upload larger than {limit_mb:g} MB (MMDEPLOY_MAX_UPLOAD_MB)")
        try:
            length = int(headers.get("content-length", "-1"))
        except ValueError:
            return await _reply(send, 400, "bad Content-Length header")
        if length > self.max_bytes:
            return await _reply(send, *too_large)
        boundary = _boundary(headers.get("content-type", ""))
        if boundary is None:
            return await _reply(send, 415, f"send the file as multipart/form-data in the field '{FIELD}', "
                                           f"e.g. curl -F {FIELD}=@clip.mp4 URL")
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        try:
            try:
                parts = await _spool(receive, body, boundary, self.max_bytes)
            except UploadTooLarge:
                return await _reply(send, *too_large)
            except ValueError as exc:
                return await _reply(send, 400, f"malformed multipart body ({exc})")
            video = [p for p in parts if p.get("name") == FIELD]
            if not video or "filename" not in video[0]:
                seen = ", ".join(repr(p.get("name"))[:40] for p in parts[:5]) or "none"
                return await _reply(send, 400, f"no file in the multipart field '{FIELD}' (fields sent: {seen}); "
                                               f"e.g. curl -F {FIELD}=@clip.mp4 URL")
            problem = name_problem(video[0]["filename"]) or fields_problem(parts)
            if problem:
                return await _reply(send, 400, problem)
            name = base_name(video[0]["filename"])
            if video[0]["size"] == 0:
                return await _reply(send, 422, f"{name}: empty file")
            scope.setdefault("state", {})["mmdeploy_upload"] = name
            body.seek(0)
            await self.app(scope, _replay(body, receive), send)
        finally:
            body.close()


def _boundary(content_type: str) -> bytes | None:
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        return None
    return options[b"boundary"]


async def _spool(receive, body, boundary: bytes, max_bytes: int) -> list[dict[str, Any]]:
    """Read the request into `body`, counting bytes, and parse part headers on the way:
    [{name, filename?, size}] per part. Raises UploadTooLarge past max_bytes, ValueError if malformed."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    current: dict[str, Any] = {}

    def on_header_field(data, start, end):
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]

    def on_header_end():
        if header["field"].lower() == b"content-disposition":
            _, options = parse_options_header(header["value"])
            current["name"] = options.get(b"name", b"").decode("utf-8", "replace")
            if b"filename" in options:
                current["filename"] = options[b"filename"].decode("utf-8", "replace")
        header["field"], header["value"] = b"", b""

    def on_part_begin():
        current.clear()
        current["size"] = 0

    def on_part_data(data, start, end):
        current["size"] += end - start
        if "filename" not in current and current["size"] <= MAX_FIELD_BYTES:
            current["value"] = current.get("value", b"") + data[start:end]

    def on_part_end():
        parts.append(dict(current))
        if len(parts) > MAX_FIELDS:
            raise TooManyFields()

    parser = MultipartParser(boundary, {"on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end, "on_part_begin": on_part_begin,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValueError("client disconnected")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > max_bytes:
            raise UploadTooLarge()
        body.write(chunk)
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise ValueError(str(exc)) from None
        except TooManyFields:
            raise ValueError(f"more than {MAX_FIELDS} fields; send the file in '{FIELD}' and at most "
                             "the fields window and hop") from None
        if not message.get("more_body", False):
            break
    parser.finalize()
    return parts


def _replay(body, receive, chunk: int = 1 << 16):
    """An ASGI receive that serves the spooled body again, then defers to the real one (disconnects)."""
    done = False

    async def replay():
        nonlocal done
        if done:
            return await receive()
        data = body.read(chunk)
        more = len(data) == chunk
        if more:
            rest = body.read(1)
            more = bool(rest)
            if more:
                body.seek(-1, os.SEEK_CUR)
        done = not more
        return {"type": "http.request", "body": data, "more_body": more}

    return replay


async def _reply(send, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


def stop_server(proc, timeout: float = 20.0) -> None:
    """Stop a server started with `start_new_session=True` (tests, benchmarks): SIGTERM to its process
    group (BentoML then stops its workers); after `timeout` s, SIGKILL to the group and to any worker left
    (BentoML starts each worker in a process group of its own, so the group signal alone misses them)."""
    import contextlib
    import signal
    import subprocess

    import psutil  # a BentoML dependency

    workers = []
    with contextlib.suppress(psutil.Error):
        workers = psutil.Process(proc.pid).children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for worker in psutil.wait_procs(workers, timeout=10)[1]:
        worker.kill()
