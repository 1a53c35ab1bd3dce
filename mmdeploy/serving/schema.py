"""What the HTTP service answers, in its OpenAPI document at /docs.json (page: /): the result models of
mmdeploy/results.py, our error answers, the request bounds, and /timeline declared as NDJSON.

BentoML declares only a 200 answer and its own error shapes, and an upload that is optional with window/hop
unbounded; `patch_openapi` adds our answers (400, 413, 415, 422, 503), marks the body and its `video` file
required, gives window/hop the bounds the upload guard enforces (0, or [0.1, 600] s), declares /timeline as
application/x-ndjson with its line schemas. `OpenAPIPatch` (ASGI middleware) applies it on GET /docs.json
and answers GET / with `DOCS_PAGE`: BentoML's Swagger UI files from this server, without the third-party
tag manager BentoML's own page loads (an offline deployment makes no outside request).
"""
from __future__ import annotations

import json
from typing import Any

from mmdeploy.results import ClassifyResult, ErrorBody, TimelineResult, TimelineWindow
from mmdeploy.serving.bounds import FIELD, MIN_HOP_S, MIN_WINDOW_S, number_schema

DOCS_PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="UTF-8">
  <title>mmdeploy: audio-video classifier API</title>
  <link rel="stylesheet" type="text/css" href="./static_content/swagger-ui.css">
  <link rel="stylesheet" type="text/css" href="./static_content/index.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="./static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
  <script src="./static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
  <script>
    window.onload = function () {
      window.ui = SwaggerUIBundle({url: "./docs.json", dom_id: "#swagger-ui", deepLinking: true,
        presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "BaseLayout",
        validatorUrl: null});
    };
  </script>
  <p style="font-family: sans-serif; margin: 1em 2em">The browser page: <a href="./ui/">/ui</a></p>
</body>
</html>
"""

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
    for route in ("/classify", "/timeline"):
        body = paths.get(route, {}).get("post", {}).get("requestBody")
        if body:
            body["required"] = True
            for media in body.get("content", {}).values():
                form = media.get("schema", {})
                form["required"] = sorted({*form.get("required", []), FIELD})
                form["additionalProperties"] = False  # the guard refuses any other field
                fields = form.get("properties", {})
                for name, low in (("window", MIN_WINDOW_S), ("hop", MIN_HOP_S)):
                    if name in fields:
                        fields[name] = {"title": fields[name].get("title", name.title()), **number_schema(low)}
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
    """ASGI middleware: GET /docs.json answers `patch_openapi` of what the app answers; GET / the DOCS_PAGE."""

    def __init__(self, app, path: str = "/docs.json", page: str = "/"):
        self.app = app
        self.path, self.page = path, page

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"] == self.page:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html; charset=utf-8"),
                                    (b"content-length", str(len(DOCS_PAGE)).encode())]})
            return await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else DOCS_PAGE})
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
