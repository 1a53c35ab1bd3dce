"""`ResponseRules`: ASGI middleware that every answer of the HTTP service passes through, whoever made it
(our routes, BentoML's, Starlette's static files):

- `X-Content-Type-Options: nosniff` on every answer (a browser never second-guesses a content type);
- a redirect's Location is a path on this server (`/ui/`), never an absolute URL built from the request's
  Host header (which the client chose);
- on the upload routes, an error answer that is not already ours (`{"error": "..."}` alone: BentoML's
  `{"error", "detail": [...]}`, a plain-text 404/405/500) is rewritten to one JSON line `{"error": ...}`,
  its status and other headers kept.
"""
from __future__ import annotations

import json
from http import HTTPStatus
from urllib.parse import urlsplit, urlunsplit

NOSNIFF = (b"x-content-type-options", b"nosniff")
UPLOAD_ROUTES = ("/classify", "/timeline")


def path_only(location: bytes) -> bytes:
    """An absolute redirect target -> its path, query and fragment (a relative one is kept as it is)."""
    parts = urlsplit(location.decode("latin-1"))
    if not (parts.scheme or parts.netloc):
        return location
    return urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment)).encode("latin-1")


def error_message(status: int, body: bytes) -> str | None:
    """The one-line message of an error answer's body, or None when the body is ours already."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and set(data) == {"error"} and isinstance(data["error"], str):
        return None
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        text = data["error"]
        details = data.get("detail")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            first = details[0]
            where = ".".join(str(x) for x in first.get("loc", []))
            text += f" ({where}: {first.get('msg', '')})" if where else f" ({first.get('msg', '')})"
    else:
        text = body.decode("utf-8", "replace").strip() or phrase
    text = " ".join(text.split())[:300]
    if status == 405:
        text += "; POST the file as multipart/form-data in the field 'video'"
    return text


class ResponseRules:
    """See the module docstring."""

    def __init__(self, app, error_routes: tuple[str, ...] = UPLOAD_ROUTES):
        self.app = app
        self.error_routes = error_routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rewrite_errors = scope["path"] in self.error_routes
        held: dict | None = None  # an error answer's start, held until its body is read
        chunks: list[bytes] = []

        async def rules(message) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = [(k, path_only(v) if k.lower() == b"location" else v)
                           for k, v in message.get("headers", []) if k.lower() != NOSNIFF[0]]
                message = {**message, "headers": [*headers, NOSNIFF]}
                if rewrite_errors and message["status"] >= 400:
                    held = message
                    return
                return await send(message)
            if held is None or message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            text = error_message(held["status"], body)
            if text is not None:
                body = json.dumps({"error": text}).encode()
            headers = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-length", b"content-type")]
            await send({**held, "headers": [*headers, (b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, rules)
