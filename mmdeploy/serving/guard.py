"""`UploadGuard`: checks POST bodies on the upload routes before the service parses them (see __init__).

Whatever the guard lets through, the service's own parsing accepts: every field is checked here the way
BentoML's pydantic model would read it (a finite number, within the bounds, sent once), so a bad request is
answered here in one JSON line and never becomes BentoML's `{"detail": [...]}` with a traceback in the log.
The upload's file name is the client's to echo back (`file` in the answer), never a name on disk: the part's
Content-Disposition is rewritten, on the way through, to `bounds.disk_name` (BentoML writes the part to a
temporary file named after it, and `tmpXXXXXXXX` + 255 bytes is past what a file system allows).
"""
from __future__ import annotations

import json
import tempfile
from typing import Any

from mmdeploy.serving.bounds import (FIELD, MAX_FIELD_BYTES, MAX_FIELDS, base_name, disk_name, fields_problem,
                                     name_problem)

SPOOL_BYTES = 1 << 20  # request bodies above this spill from memory to a temporary file
CHUNK = 1 << 16  # bytes per replayed message


class UploadTooLarge(Exception):
    pass


class TooManyFields(Exception):
    pass


class UploadGuard:
    """Checks POST bodies on `paths` before the service parses them (see the module docstring)."""

    def __init__(self, app, max_bytes: int, paths: tuple[str, ...] = ("/classify", "/timeline")):
        self.app = app
        self.paths = paths
        self.max_bytes = max_bytes

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
            problem = name_problem(video[0]["filename"]) or fields_problem(parts, scope["path"] == "/timeline")
            if problem:
                return await _reply(send, 400, problem)
            name = base_name(video[0]["filename"])
            if video[0]["size"] == 0:
                return await _reply(send, 422, f"{name}: empty file")
            scope.setdefault("state", {})["mmdeploy_upload"] = name
            start, end = video[0]["disposition"]
            patch = (start, end, f'form-data; name="{FIELD}"; filename="{disk_name(name)}"'.encode())
            total = body.tell()
            body.seek(0)
            scope = {**scope, "headers": _with_length(scope["headers"], total + len(patch[2]) - (end - start))}
            await self.app(scope, _replay(body, patch, receive), send)
        finally:
            body.close()


def _boundary(content_type: str) -> bytes | None:
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        return None
    return options[b"boundary"]


async def _spool(receive, body, boundary: bytes, max_bytes: int) -> list[dict[str, Any]]:
    """Read the request into `body`, counting bytes, and parse part headers on the way: [{name, filename?,
    size, disposition: (start, end) byte offsets of its Content-Disposition value, value?}] per part.
    Raises UploadTooLarge past max_bytes, ValueError if malformed."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: list[dict[str, Any]] = []
    header: dict[str, Any] = {"field": b"", "value": b"", "start": None, "end": None}
    current: dict[str, Any] = {}
    offset = 0  # of the chunk being parsed, in the whole body

    def on_header_field(data, start, end):
        header["field"] += data[start:end]

    def on_header_value(data, start, end):
        header["value"] += data[start:end]
        if header["start"] is None:
            header["start"] = offset + start
        header["end"] = offset + end

    def on_header_end():
        if header["field"].lower() == b"content-disposition" and header["start"] is not None:
            _, options = parse_options_header(header["value"])
            current["name"] = options.get(b"name", b"").decode("utf-8", "replace")
            if b"filename" in options:
                current["filename"] = options[b"filename"].decode("utf-8", "replace")
            current["disposition"] = (header["start"], header["end"])
        header.update(field=b"", value=b"", start=None, end=None)

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
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ValueError("client disconnected")
        chunk = message.get("body", b"")
        if offset + len(chunk) > max_bytes:
            raise UploadTooLarge()
        body.write(chunk)
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise ValueError(str(exc)) from None
        except TooManyFields:
            raise ValueError(f"more than {MAX_FIELDS} fields; send the file in '{FIELD}' and at most "
                             "the fields window and hop") from None
        offset += len(chunk)
        if not message.get("more_body", False):
            break
    parser.finalize()
    return parts


def _with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """The request headers with Content-Length set to `length` (the replayed body's, after the rewrite)."""
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")]
    return [*kept, (b"content-length", str(length).encode())]


def _chunks(body, patch: tuple[int, int, bytes]):
    """The spooled body with bytes [start, end) replaced by `patch`'s bytes, in chunks of at most CHUNK."""
    start, end, data = patch
    left = start
    while left > 0:
        block = body.read(min(CHUNK, left))
        if not block:
            return
        left -= len(block)
        yield block
    yield data
    body.seek(end)
    while block := body.read(CHUNK):
        yield block


def _replay(body, patch: tuple[int, int, bytes], receive):
    """An ASGI receive that serves the spooled (and patched) body again, then defers to the real one
    (disconnects)."""
    chunks = _chunks(body, patch)
    pending = next(chunks, b"")
    done = False

    async def replay():
        nonlocal pending, done
        if done:
            return await receive()
        data, pending = pending, next(chunks, None)
        done = pending is None
        return {"type": "http.request", "body": data, "more_body": not done}

    return replay


async def _reply(send, status: int, message: str) -> None:
    payload = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
