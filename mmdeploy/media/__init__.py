"""PyAV: a media file -> Clip (mono float32 audio at the spec's rate, RGB uint8 frames at the spec's times).

One file per part: clip.py (what comes out), source.py (opening, stream choice, the clock), rotation.py (display
matrices, the MP4 box parser), demux.py (bounded decoding of one stream), skip.py (the skip plan), video.py,
audio.py (the two tracks), decode.py (probe, decode_window, iter_windows).

Rules, in one place:
- Time 0 is the container's start time, so `start` means "seconds into the file" even when the streams
  start at 1.4 s (MPEG-TS) or 3 ms (WebM). Frame and sample times below are on that clock.
- Stream choice, per kind: ignore cover art (attached pictures) and undecodable streams; prefer the
  default disposition, then the most pixels (video) or the highest sample rate then channels (audio),
  then the lowest index. Data and subtitle streams are never read.
- A window [start, start + L) has L = min(spec.window_seconds, end - start, duration - start); this L is
  `Clip.seconds`. Audio is round(L * rate) mono samples (gaps and an early end of the track are zeros;
  None when the track has no sample in the window at all).
  Frame i is the frame on screen at start + offset_i * L / spec.window_seconds (offsets from
  `spec.frame_offsets()`), so a 2.2-s clip with a 3-s window still gets N distinct frames spread over
  its real content; a target before the first frame takes the first frame, after the last the last
  (for its duration, at least `video.HOLD_LAST` s; later than that the window has no video: frames None).
- Rotation side data (display matrix) is applied to the frames, as ffmpeg's autorotate does.
- Timestamps that jump more than `source.MAX_JUMP` s ahead are treated as damage (the stream stays
  contiguous), so a corrupt packet cannot make a window allocate or wait for minutes of media.
- Work is bounded: each pass seeks near the window, stops once past it, and gives up (MediaError)
  after `demux.PACKETS_PER_SECOND` packets per second of media advanced (plus a fixed allowance), so a
  hostile file whose timestamps never advance cannot hang a worker.
"""
from __future__ import annotations

import gc
import os

from mmdeploy.media.clip import AudioInfo, Clip, DecodeOptions, MediaInfo, VideoInfo
from mmdeploy.media.decode import decode_window, iter_windows, probe
from mmdeploy.media.source import OPEN_TIMEOUT

__all__ = ["OPEN_TIMEOUT", "AudioInfo", "Clip", "DecodeOptions", "MediaInfo", "VideoInfo", "decode_window",
           "iter_windows", "probe"]

# Decoding can leave PyAV objects in reference cycles that own ffmpeg threads; a forked child (a
# DataLoader worker, a fork-based pool) that garbage-collects them waits forever for threads it does
# not have. So every fork of a process that imported this package first collects them in the parent.
os.register_at_fork(before=gc.collect)
