"""Request bounds of the upload routes, and the checks that name the bound a request breaks."""
from __future__ import annotations

import math
import ntpath
from typing import Any

FIELD = "video"  # the multipart field that carries the upload
MAX_FIELDS = 16  # multipart parts per request (the API takes 3: video, window, hop)
MAX_FIELD_BYTES = 1000  # a form field other than the file
NUMBER_FIELDS = ("window", "hop")
MAX_NAME_BYTES = 255  # an upload's file name (UTF-8), as most file systems allow
MIN_WINDOW_S = 0.1  # /timeline window and hop bounds (seconds); 0 means "the model's window"
MAX_WINDOW_S = 600.0
MIN_HOP_S = 0.1


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


def fields_problem(parts: list[dict[str, Any]], timeline: bool = False) -> str | None:
    """Why the form fields beside the file are refused, or None: a field the route does not take (/classify:
    video; /timeline, `timeline`: video, window, hop), one sent twice, too long, window/hop sent as a file or not
    a finite number or out of `timeline_problem`'s bounds. What passes here, the service's own parsing accepts
    (no request reaches it to fail there), and the OpenAPI document says the same (serving/schema.py)."""
    seen: set[str] = set()
    numbers = {}
    taken = (FIELD, *NUMBER_FIELDS) if timeline else (FIELD,)
    for part in parts:
        name = str(part.get("name"))[:40]
        if name not in taken:
            return (f"form field {name!r} is not one this route takes; send only "
                    f"{', '.join(repr(t) for t in taken)}")
        if name in seen:
            return f"form field {name!r} sent more than once; send it once"
        seen.add(name)
        if "filename" in part:
            if name in NUMBER_FIELDS:
                return f"form field {name!r} is a file; send a number of seconds, e.g. -F {name}=5"
            continue
        if part["size"] > MAX_FIELD_BYTES:
            return f"form field {name!r} is longer than {MAX_FIELD_BYTES} bytes"
        if name in NUMBER_FIELDS:
            text = part.get("value", b"").decode("utf-8", "replace").strip()
            try:
                numbers[name] = float(text)
            except ValueError:
                return f"form field {name!r}={text[:40]!r}: expected a number of seconds"
            if not math.isfinite(numbers[name]):
                return f"form field {name!r}={text[:40]!r}: not a finite number of seconds"
    if timeline:
        return timeline_problem(numbers.get("window", 0.0), numbers.get("hop", 0.0))
    return None


def number_schema(low: float, default: float = 0.0) -> dict[str, Any]:
    """OpenAPI schema of a window/hop form field: 0 or [low, MAX_WINDOW_S] seconds."""
    return {"type": "number", "default": default, "anyOf": [{"enum": [0]}, {"minimum": low, "maximum": MAX_WINDOW_S}],
            "description": f"seconds: 0, or {low:g} to {MAX_WINDOW_S:g}"}


def disk_name(name: str) -> str:
    """The name an upload is written to disk under: 'upload' and the client's extension when it is plain
    (1-10 ASCII letters and digits; it helps a demuxer guess the format), never the client's name itself."""
    stem, dot, ext = name.rpartition(".")
    return "upload." + ext.lower() if dot and stem and ext.isascii() and ext.isalnum() and len(ext) <= 10 else "upload"


def base_name(filename: str) -> str:
    """The last component of a client's file name on any platform's separators (/ and \\), else 'upload'."""
    return ntpath.basename(filename.replace("/", "\\")).strip() or "upload"
