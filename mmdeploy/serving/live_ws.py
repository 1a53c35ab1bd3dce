"""`/live/ws`: a live session over a WebSocket, mounted on the service (the /ui page's live mode uses it).

    ws://HOST/live/ws?window=W&hop=H&type=webm   then binary messages: the bytes of a growing stream (a
                                                 MediaRecorder's chunks: WebM from Chromium and Firefox,
                                                 type=mp4 from Safari, type=ts for MPEG-TS)
    ws://HOST/live/ws?source=URL&window=W&hop=H  the service opens URL itself, only if the operator lists it
                                                 in MMDEPLOY_LIVE_SOURCES (exact match); else it opens nothing

Server -> client, one JSON object per text message: {"ready": {classes, window, hop, backend, limits}} once,
then `mmdeploy.live`'s window lines and event lines (the same as `mmdeploy watch --json`) as they happen, and
{"summary": {...}} last; {"error": "..."} says why a session was refused or ended (one line naming the bound),
then the server closes the socket. A text message {"stop": true} ends the stream (the windows it completed
still come, then the summary).

The stream is decoded exactly as uploads are: in a decode worker process (pipeline.decode_live), fed
through a FIFO, so a hostile stream crashes or hangs only its own session. Bounds (mmdeploy/settings.py):
MMDEPLOY_LIVE_SESSIONS at once per API worker, MMDEPLOY_LIVE_SESSION_S long, MMDEPLOY_LIVE_IDLE_S without
data, MMDEPLOY_LIVE_MAX_BYTES_PER_S (a 2-s burst allowed); window/hop as /timeline's.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from mmdeploy.live import LiveSession, PipeFeed
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.media.live import LiveSource
from mmdeploy.serving.answers import Pull
from mmdeploy.serving.bounds import timeline_problem
from mmdeploy.settings import Settings

FORMATS = {"webm": "matroska", "mp4": "mov", "ts": "mpegts"}  # ?type= -> FFmpeg's demuxer
BURST_S = 2.0  # seconds of MMDEPLOY_LIVE_MAX_BYTES_PER_S a session may send at once
SOURCE_RECONNECTS = 3  # an allowed URL that drops is reopened this many times in a row
# what an allowed URL (and the playlists or redirects it leads to) may use: network protocols only, never file:,
# pipe:, fd:, data:, subfile: or concat: (FFmpeg applies the list to every nested open too)
NETWORK_PROTOCOLS = "udp,rtp,rtsp,srtp,tcp,tls,http,https,httpproxy,hls,crypto,srt"

log = logging.getLogger("mmdeploy.service")


class Rate:
    """A token bucket: `take(n)` is False once more than `per_s` bytes per second (a `burst_s` burst) came."""

    def __init__(self, per_s: float, burst_s: float = BURST_S, clock: Callable[[], float] = time.monotonic):
        self.per_s, self.capacity, self.clock = per_s, per_s * burst_s, clock
        self.tokens, self.last = self.capacity, clock()

    def take(self, n: int) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.per_s)
        self.last = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


@dataclass(frozen=True)
class Request:
    window: float
    hop: float
    format: str | None
    source: str | None


def parse(query: dict[str, str], settings: Settings) -> tuple[Request | None, str | None]:
    """The query of a /live/ws request -> (Request, None) or (None, why it is refused)."""
    try:
        window, hop = float(query.get("window", 0) or 0), float(query.get("hop", 0) or 0)
    except ValueError:
        return None, "window and hop: expected numbers of seconds (0: the model's window)"
    problem = timeline_problem(window, hop)
    if problem:
        return None, problem
    source = query.get("source")
    if source is not None:
        if source not in settings.live_source_list:
            return None, ("this service opens no URL a request names; the operator lists the ones it may open in "
                          "MMDEPLOY_LIVE_SOURCES (exact match)")
        return Request(window, hop, None, source), None
    kind = query.get("type", "webm")
    if kind not in FORMATS:
        return None, f"type={kind[:20]!r}: expected one of {', '.join(FORMATS)} (the MediaRecorder's container)"
    return Request(window, hop, FORMATS[kind], None), None


class LiveSocket:
    """The ASGI app mounted at /live (see the module docstring). `predictor()` gives the service's
    RemotePredictor (it raises while the model is not ready)."""

    def __init__(self, settings: Settings, options: DecodeOptions, predictor: Callable[[], Awaitable[Any]]):
        self.settings, self.options, self.predictor = settings, options, predictor
        self.active = 0
        self.threads = ThreadPoolExecutor(max(1, settings.live_sessions), thread_name_prefix="live")

    async def __call__(self, scope, receive, send) -> None:
        from starlette.responses import JSONResponse
        from starlette.websockets import WebSocket

        if scope["type"] != "websocket":
            if scope["type"] == "http":
                await JSONResponse({"error": "/live/ws is a WebSocket: connect to ws://HOST/live/ws?window=W&hop=H "
                                             "and send the stream's bytes"}, status_code=426)(scope, receive, send)
            return
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        request, problem = parse(dict(ws.query_params), self.settings)
        most = self.settings.live_sessions
        if problem is None and self.active >= most:
            problem = (f"{self.active} live sessions already run (MMDEPLOY_LIVE_SESSIONS={most}); try again later"
                       if most else "live sessions are off here (MMDEPLOY_LIVE_SESSIONS=0)")
        if problem is not None:
            return await close(ws, {"error": problem}, 1008)
        self.active += 1
        try:
            await self.session(ws, request)
        finally:
            self.active -= 1

    async def session(self, ws, request: Request) -> None:
        s = self.settings
        try:
            predictor = await self.predictor()
        except Exception as exc:  # noqa: BLE001 - the model is not ready: said, like the 503 of uploads
            return await close(ws, {"error": f"the model is not ready ({exc})"}, 1013)
        feed = None
        if request.source is not None:
            source = LiveSource(request.source, request.source, options=(("protocol_whitelist", NETWORK_PROTOCOLS),))
            reconnects = SOURCE_RECONNECTS
        else:
            feed = PipeFeed("browser", request.format, max_queued=int(s.live_max_bytes_per_s * 2 * BURST_S))
            source, reconnects = feed.source(), 0
        session = LiveSession(source, predictor, request.window or None, request.hop or None, top_k=5,
                              open_s=s.live_idle_s, read_s=s.live_idle_s, reconnects=reconnects, options=self.options)
        problems: list[str] = []
        lines = Pull(session.run(), self.threads)
        await ws.send_text(json.dumps({"ready": {
            "classes": list(predictor.classes), "window": session.window, "hop": session.hop,
            "backend": predictor.backend, "limits": {"session_s": s.live_session_s, "idle_s": s.live_idle_s,
                                                      "max_bytes_per_s": s.live_max_bytes_per_s}}}))
        upload = asyncio.ensure_future(self.receive(ws, feed, session, problems) if feed is not None
                                       else self.until_closed(ws, session))
        out = asyncio.ensure_future(self.send(ws, lines))
        try:
            done, _ = await asyncio.wait({out}, timeout=s.live_session_s)
            if not done:
                problems.append(f"the session reached {s.live_session_s:g} s (MMDEPLOY_LIVE_SESSION_S)")
                session.stop()
                await out
            sent = out.result()
        finally:
            session.stop()
            upload.cancel()
            lines.close()
            if feed is not None:
                feed.close(drain_s=0)
        summary = session.summary()
        log.info("live session: %s", json.dumps(summary["summary"]))
        if sent:
            await close(ws, summary, 1000, problems[0] if problems else None)

    async def receive(self, ws, feed: PipeFeed, session: LiveSession, problems: list[str]) -> None:
        """The browser's bytes -> the FIFO, within the bounds; any breach ends the session with its reason."""
        s = self.settings
        rate = Rate(s.live_max_bytes_per_s)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.receive(), s.live_idle_s)
                except asyncio.TimeoutError:
                    problems.append(f"no data for {s.live_idle_s:g} s (MMDEPLOY_LIVE_IDLE_S)")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                data, text = message.get("bytes"), message.get("text")
                if data:
                    if not rate.take(len(data)):
                        problems.append(f"more than {s.live_max_bytes_per_s} bytes per second "
                                        "(MMDEPLOY_LIVE_MAX_BYTES_PER_S)")
                        break
                    if not feed.write(data):
                        problems.append("the decoder fell behind the stream; send less (a lower bitrate)")
                        break
                elif text is not None and _is_stop(text):
                    feed.close()
                    return  # the windows completed so far still come, then the summary
        except Exception as exc:  # noqa: BLE001 - a broken socket ends only this session
            problems.append(f"the connection broke ({type(exc).__name__})")
        session.stop()

    async def until_closed(self, ws, session: LiveSession) -> None:
        """A server-side source: the client only listens; its leaving (or a stop) ends the session."""
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect" or _is_stop(message.get("text") or ""):
                    break
        except Exception:  # noqa: BLE001
            pass
        session.stop()

    async def send(self, ws, lines: Pull) -> bool:
        """Session lines -> the socket; False once the client is gone."""
        while True:
            line = await lines.next()
            if line is None:
                return True
            try:
                await ws.send_text(json.dumps(line))
            except Exception:  # noqa: BLE001 - the client went away: the caller stops the session
                return False


def _is_stop(text: str) -> bool:
    try:
        return bool(json.loads(text).get("stop"))
    except (ValueError, AttributeError):
        return False


async def close(ws, last: dict[str, Any], code: int, error: str | None = None) -> None:
    """Send the last message(s) and close; a client already gone is fine."""
    try:
        await ws.send_text(json.dumps(last))
        if error is not None:
            await ws.send_text(json.dumps({"error": error}))
        await ws.close(code)
    except Exception:  # noqa: BLE001
        pass
