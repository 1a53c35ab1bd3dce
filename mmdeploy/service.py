"""HTTP service: `bentoml serve` from the repository root, `bentoml serve mmdeploy.service:AVClassifier`
anywhere mmdeploy is installed, or `mmdeploy serve`.

AVClassifier (API worker) takes uploads and has each one decoded (PyAV) and turned into features in a
decode process (the pipeline's isolated decode stage): a decoder crash or hang on a hostile file costs only
that upload (422), never the worker or the requests beside it. At most MMDEPLOY_DECODE_PROCESSES uploads
decode at once (default: one per core); the rest wait their turn. The result JSON is built by the pipeline;
every model call goes to AVModel, whose one batchable API lets concurrent requests share a model call.
Knobs: mmdeploy/settings.py (read once, here); request bounds and the rest: mmdeploy/serving/; answer
models: mmdeploy/results.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import numpy as np
from starlette.responses import JSONResponse, StreamingResponse
from starlette.staticfiles import StaticFiles
from typing_extensions import Annotated

from mmdeploy import pipeline
from mmdeploy.classify import classify_timeline
from mmdeploy.results import ClassifyResult, TimelineResult
from mmdeploy.serving import answers as core
from mmdeploy.serving.bounds import count_problem, timeline_problem
from mmdeploy.serving.guard import UploadGuard
from mmdeploy.serving.headers import ResponseRules
from mmdeploy.serving.live_ws import LiveSocket
from mmdeploy.serving.remote import KEEP_SESSION, RemotePredictor, model_timeout_s, stack_probs, unpack
from mmdeploy.serving.schema import OpenAPIPatch
from mmdeploy.settings import Settings

SETTINGS = Settings.from_env()  # the edge: every knob read once, here
DECODE = pipeline.decode_options(SETTINGS)
log = logging.getLogger("mmdeploy.service")
core.one_copy_of_server_logs()


@bentoml.service(name="av-model", workers=SETTINGS.model_workers,
                 traffic={"timeout": model_timeout_s(SETTINGS.max_latency_ms)},  # short: see remote.py
                 runner_connection=KEEP_SESSION)  # the API's session to it is never replaced under calls (remote.py)
class AVModel:
    """The model (bundle from MMDEPLOY_MODEL, else the BentoML store), loaded and warmed before ready.
    A model that cannot load keeps this worker up: the cause is logged once (with its traceback), `info`
    reports it and the API service's /readyz answers 503; restarting would only fail the same way."""

    # Declared whenever the store has it, so `bentoml build` packs it even with MMDEPLOY_MODEL set (which only
    # overrides at serve time); serving a run folder with an empty store declares nothing.
    if not SETTINGS.model or core.in_store(SETTINGS.model_tag):
        bento_model = bentoml.models.BentoModel(SETTINGS.model_tag)

    def __init__(self) -> None:
        from mmdeploy.runtime import load_predictor

        self.predictor, self.error = None, None
        cores = SETTINGS.cores()[1]
        core.pin(cores)
        try:
            predictor = load_predictor(core.model_path(SETTINGS, lambda: self.bento_model.path), SETTINGS.backend,
                                       threads=len(cores))
            spec = predictor.spec
            predictor.predict(np.zeros((2, 1, *spec.spectrogram_shape), np.float32),
                              np.zeros((2, *spec.frames_shape), np.float32))  # warm-up
            self.predictor = predictor
        except Exception as exc:  # noqa: BLE001 - reported by readiness, never a restart loop
            self.error = f"the model cannot be loaded ({type(exc).__name__}: {exc})"
            log.exception("%s", self.error)

    def __is_ready__(self) -> bool:
        # ready to answer once __init__ ran, loaded or not: BentoML's client waits for a dependency's readiness
        # before its first call, so a not-ready model would hang the API's readiness probe instead of
        # letting `info` say why (the API service then reports 503 with the cause)
        return True

    @bentoml.api(batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Packed windows [B, D] (serving.remote.pack) -> probabilities [B, 3 (fused, audio, video), C]."""
        if self.predictor is None:
            raise RuntimeError(self.error)
        return stack_probs(self.predictor.predict(*unpack(windows, self.predictor.spec)))

    @bentoml.api
    def info(self) -> dict:
        p = self.predictor
        if p is None:
            return {"error": self.error}
        return {"backend": p.backend, "classes": list(p.classes), "spec": p.spec.to_dict()}


@bentoml.service(name="av-classifier", workers=SETTINGS.api_workers, traffic={"timeout": SETTINGS.request_timeout_s})
class AVClassifier:
    model = bentoml.depends(AVModel)

    def __init__(self) -> None:
        # decode threads each wait on one decode process; model threads wait on model calls (cheap)
        core.pin(SETTINGS.cores()[0])  # this worker and its decode processes (forked later) run there
        self.decode = ThreadPoolExecutor(SETTINGS.decode_count(), thread_name_prefix="decode")
        self.calls = ThreadPoolExecutor(64, thread_name_prefix="model-call")
        self.model_info: dict | None = None
        self.ready_log = core.ReadyLog()
        pipeline.start_decoders(SETTINGS.decode_count(), SETTINGS.decode_recycle_jobs,
                                SETTINGS.decode_recycle_mb)  # the forkserver imports PyAV once,
        # while the model loads; every decode process is kept warm

    async def __is_ready__(self) -> bool:
        """Never raises or hangs: each probe waits at most READY_TIMEOUT_S for the model service."""
        try:
            await self._model_info()
        except core.NotReady as exc:
            self.ready_log.not_ready(str(exc))
            return False
        self.ready_log.ready()
        return True

    async def _model_info(self) -> dict:
        if self.model_info is None:
            try:
                info = await asyncio.wait_for(self.model.to_async.info(), core.READY_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any failure to answer is "not ready"
                raise core.NotReady(f"the model service is not answering ({type(exc).__name__}: {exc})") from None
            if "error" in info:
                raise core.NotReady(info["error"])
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.decode, pipeline.warm_decoder)
            self.model_info = info
        return self.model_info

    async def predictor(self) -> RemotePredictor:
        return RemotePredictor(await self._model_info(), self.model.to_async.predict,
                               asyncio.get_running_loop(), None, SETTINGS.decode_timeout_s)

    @bentoml.api(route="/classify")
    async def classify(self, video: Path, ctx: bentoml.Context) -> ClassifyResult:
        """The file's first model window -> label, probabilities, each modality's opinion, the window
        classified ({start, end} s), timings. Decoded in a separate process: a crash is a 422."""
        name = core.upload_name(ctx.request)
        loop = asyncio.get_running_loop()
        try:
            predictor = await self.predictor()
            item = await loop.run_in_executor(self.decode, pipeline.decode_file, video, predictor.spec,
                                              SETTINGS.decode_timeout_s, True, DECODE)
            result = await loop.run_in_executor(self.calls, pipeline.classify_items, [item], predictor, 5)
        except Exception as exc:
            return core.fail(ctx, *core.explain(exc, name, SETTINGS.decode_timeout_s))
        return JSONResponse({**result[0], "file": name})

    @bentoml.api(route="/timeline")
    async def timeline(self, video: Path, ctx: bentoml.Context, window: float = 0.0,
                       hop: float = 0.0) -> Annotated[TimelineResult, bentoml.validators.ContentType(
                           "application/x-ndjson")]:
        """NDJSON: one line per window as it is classified, then the whole file's result with `windows`.
        window/hop in seconds (0: the model's window; hop = window); bounds in the README."""
        name = core.upload_name(ctx.request)
        problem = timeline_problem(window, hop)
        if problem:
            return core.fail(ctx, 400, problem)
        loop = asyncio.get_running_loop()
        try:
            predictor = await self.predictor()
            hop = hop or window or predictor.spec.window_seconds
            info = await loop.run_in_executor(self.decode, pipeline.probe_file, video, SETTINGS.decode_timeout_s)
            problem = count_problem(info.duration, hop, SETTINGS.max_windows)
            if problem:
                return core.fail(ctx, 400, problem)
            rows = core.Pull(classify_timeline(video, predictor, window or None, hop,
                                               timeout=SETTINGS.decode_timeout_s, options=DECODE), self.calls)
            first = await rows.next()
        except Exception as exc:
            if "rows" in locals():
                rows.close()
            return core.fail(ctx, *core.explain(exc, name, SETTINGS.decode_timeout_s))

        async def lines():
            row, count = first, 0
            try:
                while row is not None:
                    yield json.dumps({**row, "file": name}) + "\n"
                    count += 1
                    if count > SETTINGS.max_windows:  # a file that states no duration: bounded here
                        yield json.dumps({"error": f"{name}: more than {SETTINGS.max_windows} windows "
                                                   "(MMDEPLOY_MAX_WINDOWS); use a larger hop"}) + "\n"
                        return
                    try:
                        row = await rows.next()
                    except Exception as exc:  # noqa: BLE001 - the stream has started: the last line says why
                        status, message = core.explain(exc, name, SETTINGS.decode_timeout_s)
                        yield json.dumps({"error": message}) + "\n"
                        return
            finally:  # the end, an error, or the client went away: stop decoding now
                rows.close()

        return StreamingResponse(lines(), media_type="application/x-ndjson")


AVClassifier.add_asgi_middleware(ResponseRules)  # outermost of ours: nosniff, path-only redirects, JSON errors
AVClassifier.add_asgi_middleware(UploadGuard, max_bytes=SETTINGS.max_upload_bytes)
AVClassifier.add_asgi_middleware(OpenAPIPatch)
AVClassifier.mount_asgi_app(StaticFiles(directory=Path(__file__).parent / "ui", html=True), path="/ui", name="ui")
# /live/ws: the /ui page's camera and microphone, decoded in a decode process like uploads (mmdeploy/serving/live_ws.py)
AVClassifier.mount_asgi_app(LiveSocket(SETTINGS, DECODE, lambda: bentoml.get_current_service().predictor()),
                            path="/live", name="live")
