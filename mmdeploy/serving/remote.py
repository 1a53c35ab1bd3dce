"""The model service's one batchable call: packed windows in, probabilities out; `RemotePredictor` calls it."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from mmdeploy.spec import ClipSpec

log = logging.getLogger("mmdeploy.service")


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


# BentoML's client to a dependency (bentoml.depends: _bentoml_impl.client.proxy2.SessionManager, since 1.4.31)
# replaces its aiohttp session every `max_requests` calls (default 100) or `max_age` seconds (300) and closes the old
# one at once, with the calls still in flight on it: each of those either fails ("Connection closed") and, retried,
# runs twice on the model, or, with its answer half read, waits for the client's whole timeout (a lost call: 60 s,
# then 503). The model service is a local socket: nothing gains from a new session, so the session is never
# replaced (the AVModel service's `runner_connection` config). tests/test_serving.py shows both sides.
KEEP_SESSION = {"max_requests": 10**12, "max_age": 1e12}
# BentoML's traffic timeout (bentoml/_internal/server/http/traffic.py) arms a timer per request and never cancels
# it: until it fires, each request's future, context and trace span stay in memory (~5 KB). So a service's
# memory climbs for `timeout` seconds under load before it levels. The model service answers within its
# batching latency (MMDEPLOY_MAX_LATENCY_MS) or refuses: a minute is ample, and its memory is level after one.
MODEL_TIMEOUT_S = 60.0


def model_timeout_s(max_latency_ms: int) -> float:
    """The model service's traffic timeout: MODEL_TIMEOUT_S, or longer for a longer batching latency."""
    return max(MODEL_TIMEOUT_S, 2 * max_latency_ms / 1000)


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
        except aiohttp.ClientConnectionError as exc:
            log.warning("model call retried once after %s: %s", type(exc).__name__, exc)
            return await self._call(windows)
