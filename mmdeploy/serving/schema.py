"""What the HTTP service answers, in its OpenAPI document at /docs.json (page: /docs): the result models of
mmdeploy/results.py, our error answers, and /timeline declared as NDJSON.

BentoML declares only a 200 answer and its own error shapes; `patch_openapi` adds ours (400, 413, 415, 422,
503), declares /timeline as application/x-ndjson with its line schemas, and is applied by `OpenAPIPatch`
(ASGI middleware on GET /docs.json).
"""
from __future__ import annotations

import json
from typing import Any

from mmdeploy.results import ClassifyResult, ErrorBody, TimelineResult, TimelineWindow

ERRORS = {
    400: "malformed request: no file in the field `video`, a malformed multipart body, too many fields, a bad "
         "file name, or a window/hop out of bounds",
    413: "upload larger than MMDEPLOY_MAX_UPLOAD_MB",
    415: "not multipart/form-data",
    422: "the file cannot be classified: empty, not media, damaged, no usable track, a decoder crash or timeout",
    503: "the model is not loaded yet or not answering; retry later",
}


def patch_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """BentoML's OpenAPI document -> the same with our models, our error answers on /classify and /timeline,
    and /timeline's 200 declared as application/x-ndjson (lines: TimelineWindow..., then TimelineResult,
    or ErrorBody when the file breaks partway)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (ClassifyResult, TimelineWindow, TimelineResult, ErrorBody):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[model.__name__] = body
    ref = "#/components/schemas/{}".format
    errors = {str(code): {"description": text, "content": {"application/json": {"schema": {"$ref": ref("ErrorBody")}}}}
              for code, text in ERRORS.items()}
    paths = spec.get("paths", {})
    if "post" in paths.get("/classify", {}):
        op = paths["/classify"]["post"]
        op["responses"] = {"200": {"description": "the result", "content": {
            "application/json": {"schema": {"$ref": ref("ClassifyResult")}}}}, **errors}
    if "post" in paths.get("/timeline", {}):
        op = paths["/timeline"]["post"]
        line = {"oneOf": [{"$ref": ref(m)} for m in ("TimelineWindow", "TimelineResult", "ErrorBody")]}
        op["responses"] = {"200": {"description": "NDJSON: one TimelineWindow line per window, then the "
                                                  "TimelineResult (or an ErrorBody line if the file breaks partway)",
                                   "content": {"application/x-ndjson": {"schema": line}}}, **errors}
    return spec


class OpenAPIPatch:
    """ASGI middleware: GET /docs.json answers `patch_openapi` of what the app answers."""

    def __init__(self, app, path: str = "/docs.json"):
        self.app = app
        self.path = path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body = b"".join(chunks)
        if start.get("status") == 200:
            body = json.dumps(patch_openapi(json.loads(body))).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
