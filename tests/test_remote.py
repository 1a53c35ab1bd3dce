"""The API worker's calls to the model service (mmdeploy/serving/remote.py) through BentoML's own client, against a
small HTTP server on 127.0.0.1 that counts the calls it serves: every call answered exactly once."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("bentoml")

CLASSES = ["a", "b", "c"]
SCHEMA = {"routes": [{"name": "predict", "route": "/predict",
                      "input": {"type": "object", "properties": {"rows": {"type": "integer"}}},
                      "output": {"type": "array"}}]}


class CountingModel:
    """/readyz, /schema.json and a slow /predict ({"rows": B} -> [B, 3, C] of 1/C) on a free loopback port."""

    def __init__(self, delay_s: float = 0.02):
        self.delay_s, self.served = delay_s, 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> str:
        from aiohttp import web

        async def predict(request):
            rows = (await request.json())["rows"]
            self.served += 1
            await asyncio.sleep(self.delay_s)
            return web.json_response(np.full((rows, 3, len(CLASSES)), 1 / len(CLASSES)).tolist())

        app = web.Application()
        app.router.add_get("/readyz", lambda _: web.Response(text="ok"))
        app.router.add_get("/schema.json", lambda _: web.json_response(SCHEMA))
        app.router.add_post("/predict", predict)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def calls_through_bentoml_client(model: CountingModel, calls: int, concurrency: int, connection: dict,
                                 tiny_spec) -> tuple[int, list[str]]:
    """`calls` RemotePredictor.predict calls, `concurrency` threads at a time, through a BentoML AsyncClient
    with `connection` (the dependency's runner_connection config) -> (calls the model served, failures)."""
    from _bentoml_impl.client.proxy2 import AsyncClient

    from mmdeploy.serving.remote import ModelCallError, RemotePredictor

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    client = AsyncClient(model.url, server_ready_timeout=0, timeout=30, **connection)
    asyncio.run_coroutine_threadsafe(client.__aenter__(), loop).result(30)

    async def call(windows):
        return await client.call("predict", rows=len(windows))

    info = {"backend": "counting", "classes": CLASSES, "spec": tiny_spec.to_dict()}
    predictor = RemotePredictor(info, call, loop, None, timeout_s=10)
    audio = np.zeros((1, 1, *tiny_spec.spectrogram_shape), np.float32)
    video = np.zeros((1, *tiny_spec.frames_shape), np.float32)
    failures = []

    def one(_):
        try:
            out = predictor.predict(audio, video)
            assert out["fused"].shape == (1, len(CLASSES))
        except ModelCallError as exc:
            failures.append(str(exc))

    try:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(calls)))
    finally:
        asyncio.run_coroutine_threadsafe(client.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    return model.served, failures


def test_every_model_call_is_served_exactly_once(tiny_spec):
    """With the service's runner_connection (KEEP_SESSION), 300 overlapping calls are each served once and
    answered. BentoML's default replaces its session every 100 calls and closes the old one under the calls
    still in flight: they fail, or run twice when retried, or hang (see remote.py)."""
    from mmdeploy.serving.remote import KEEP_SESSION

    model = CountingModel()
    try:
        served, failures = calls_through_bentoml_client(model, 300, 8, KEEP_SESSION, tiny_spec)
    finally:
        model.close()
    assert failures == [] and served == 300, (served, failures[:3])


def test_the_service_declares_the_kept_session():
    from mmdeploy.service import AVModel
    from mmdeploy.serving.remote import KEEP_SESSION

    assert AVModel.config["runner_connection"] == KEEP_SESSION


def test_the_model_service_times_out_in_a_minute_not_ten():
    """BentoML keeps every request's timer (with its future, context and trace span) until the traffic timeout
    passes: the model service's is short, so its memory levels after a minute under load (600 s: it climbed
    through a whole 10-minute soak)."""
    from mmdeploy.service import SETTINGS, AVModel
    from mmdeploy.serving.remote import MODEL_TIMEOUT_S, model_timeout_s

    assert AVModel.config["traffic"]["timeout"] == model_timeout_s(SETTINGS.max_latency_ms) == MODEL_TIMEOUT_S
    assert model_timeout_s(90_000) == 180.0  # a longer batching latency still fits
