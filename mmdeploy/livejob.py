"""What a decode worker runs for a live source (mmdeploy.isolate streams it): windows -> feature items as they
complete, with the notes the source has to say.

Items: the `jobs.item` shape {file, audio, video, window{start, end}, timings_ms{decode, features}} plus
`arrival` (time.monotonic() when the window's last packet came out of the demuxer), `behind_ms` (how far
decoding is behind the stream's clock); and {"note": text} lines (tracks opened, where video starts, a
modality missing or back). The stream always ends with a MediaError saying why (ended, stalled, ...).
"""
from __future__ import annotations

from typing import Any, Iterator

from mmdeploy.jobs import FAST, item
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.spec import ClipSpec


def live_job(source, spec: ClipSpec, window: float, hop: float, options: DecodeOptions = FAST,
             open_s: float = 10.0, read_s: float = 5.0) -> Iterator[dict[str, Any]]:
    """A `media.live.LiveSource` -> notes and feature items (see the module docstring)."""
    from mmdeploy.media.live import live_windows

    for event in live_windows(source.name, source, spec, window, hop, options, open_s, read_s):
        if event[0] == "note":
            yield {"note": event[1]}
            continue
        _, clip, arrival, behind, busy_ms = event
        out = item(source.name, clip, spec, busy_ms)
        out["arrival"], out["behind_ms"] = arrival, round(behind * 1e3, 1)
        yield out
