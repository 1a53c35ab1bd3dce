"""HTTP service: `bentoml serve` from the repository root, `bentoml serve mmdeploy.service:AVClassifier`
anywhere mmdeploy is installed, or `mmdeploy serve`.

AVClassifier (API worker) takes uploads, decodes them with PyAV in a thread pool and builds the result
JSON with mmdeploy.classify; every model call goes to AVModel, whose one batchable API lets concurrent
requests share a model call. Knobs: MMDEPLOY_* environment variables (mmdeploy/serving_core.py).
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import bentoml
import numpy as np
from starlette.responses import StreamingResponse
from starlette.staticfiles import StaticFiles

from mmdeploy import serving_core as core
from mmdeploy.classify import classify_file, classify_timeline
from mmdeploy.spec import ClipSpec

SETTINGS = core.Settings.from_env()


@bentoml.service(name="av-model", workers=SETTINGS.model_workers, traffic={"timeout": SETTINGS.timeout_s})
class AVModel:
    """The model (bundle from MMDEPLOY_MODEL, else the BentoML store), loaded and warmed before ready."""

    # Always declared, so `bentoml build` always packs the store model (MMDEPLOY_MODEL only overrides at serve
    # time); resolved lazily, so serving a run folder needs no store model.
    bento_model = bentoml.models.BentoModel(SETTINGS.tag)

    def __init__(self) -> None:
        from mmdeploy.runtime import load_predictor

        self.predictor = load_predictor(core.model_path(SETTINGS, lambda: self.bento_model.path), SETTINGS.backend)
        spec = self.predictor.spec
        self.predictor.predict(np.zeros((2, 1, *spec.spectrogram_shape), np.float32),
                               np.zeros((2, *spec.frames_shape), np.float32))  # warm-up

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    @bentoml.api(batchable=SETTINGS.batching, max_batch_size=SETTINGS.max_batch,
                 max_latency_ms=SETTINGS.max_latency_ms)
    def predict(self, windows: np.ndarray) -> np.ndarray:
        """Packed windows [B, D] (serving_core.pack) -> probabilities [B, 3 (fused, audio, video), C]."""
        return core.stack_probs(self.predictor.predict(*core.unpack(windows, self.predictor.spec)))

    @bentoml.api
    def info(self) -> dict:
        p = self.predictor
        return {"backend": p.backend, "classes": list(p.classes), "spec": p.spec.to_dict()}


@bentoml.service(name="av-classifier", workers=SETTINGS.api_workers, traffic={"timeout": SETTINGS.timeout_s})
class AVClassifier:
    model = bentoml.depends(AVModel)

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # features run in many decode threads at once; one OpenMP thread each
        self.pool = core.DecodePool(SETTINGS.decode_threads, SETTINGS.decode_timeout_s)
        self.model_info: dict | None = None

    async def __is_ready__(self) -> bool:
        if self.model_info is None:
            info = await self.model.to_async.info()
            await self.pool.run(core.warm_features, ClipSpec.from_dict(info["spec"]))
            self.model_info = info
        return True

    async def predictor(self, deadline: float | None) -> core.RemotePredictor:
        await self.__is_ready__()
        return core.RemotePredictor(self.model_info, self.model.to_async.predict, asyncio.get_running_loop(),
                                    deadline, SETTINGS.decode_timeout_s)

    @bentoml.api(route="/classify")
    async def classify(self, video: Path, ctx: bentoml.Context) -> dict:
        """The file's first window -> label, probabilities, each modality's opinion, timings."""
        name = core.upload_name(ctx.request)
        deadline = asyncio.get_running_loop().time() + SETTINGS.decode_timeout_s
        try:
            result = await self.pool.run(classify_file, video, await self.predictor(deadline))
        except Exception as exc:
            return core.fail(ctx, *core.explain(exc, name, SETTINGS.decode_timeout_s))
        return {**result, "file": name}

    @bentoml.api(route="/timeline")
    async def timeline(self, video: Path, ctx: bentoml.Context, window: float = 0.0, hop: float = 0.0):
        """NDJSON: one line per window as it is classified, then the whole file's result with `windows`."""
        name = core.upload_name(ctx.request)
        if not (0 <= window <= 600 and (hop == 0 or hop >= 0.1)):
            return core.fail(ctx, 400, "window must be in (0, 600] s and hop >= 0.1 s (0: the defaults)")
        rows = classify_timeline(video, await self.predictor(None), window or None, hop or None)
        try:
            first = await self.pool.run(next, rows, None)
        except Exception as exc:
            return core.fail(ctx, *core.explain(exc, name, SETTINGS.decode_timeout_s))

        async def lines():
            row = first
            while row is not None:
                yield json.dumps({**row, "file": name}) + "\n"
                try:
                    row = await self.pool.run(next, rows, None)
                except Exception as exc:
                    yield json.dumps({"error": core.explain(exc, name, SETTINGS.decode_timeout_s)[1]}) + "\n"
                    return

        return StreamingResponse(lines(), media_type="application/x-ndjson")


AVClassifier.add_asgi_middleware(core.UploadGuard, max_bytes=SETTINGS.max_upload_bytes)
AVClassifier.mount_asgi_app(StaticFiles(directory=Path(__file__).parent / "ui", html=True), path="/ui", name="ui")
