"""Writing generated media so that the same pixels and samples always give the same bytes.

Used by the synthetic generator, the tests' generated clips, the fuzz corpus and the benchmarks. What made
output vary from run to run here (PyAV 18.1, FFmpeg 8, measured by encoding the same frames repeatedly in
one process with other allocations in between):
- x264's assembly read bytes its input never set: up to 10 different streams in 10 encodes at 96x96, with
  or without `threads=1`; its C paths (`x264-params asm=0`) gave one. `codec_context.thread_count` does
  not reach libx264 under PyAV 18: the thread count has to be the encoder option `threads`.
- The encoder's own RGB -> YUV conversion (swscale, SIMD) on frames whose row padding was never set.
  So frames are converted here, in numpy, and every byte of every row (padding included) is written.
- Matroska/WebM muxers write a random segment UID unless told `fflags=+bitexact`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

CONTAINER_OPTIONS = {"fflags": "+bitexact"}


def encoder_options(codec: str, options: dict[str, str] | None = None) -> dict[str, str]:
    """`options` plus what makes `codec` deterministic: one thread, and x264's C code paths."""
    out = {**(options or {}), "threads": "1"}
    if codec == "libx264":
        params = out.get("x264-params", "")
        out["x264-params"] = f"{params}:asm=0" if params else "asm=0"
    return out


def rgb_to_yuv(rgb: np.ndarray, pix_fmt: str = "yuv420p") -> list[np.ndarray]:
    """uint8 [H, W, 3] RGB -> planes (Y, U, V) of 8-bit BT.601 limited range; 4:2:0 chroma is the 2x2 box
    average, 4:4:4 keeps every sample. H and W must be even for 4:2:0."""
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    if pix_fmt == "yuv420p":
        h, w = y.shape
        u, v = (c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)) for c in (u, v))
    elif pix_fmt != "yuv444p":
        raise ValueError(f"pix_fmt {pix_fmt!r}: rgb_to_yuv writes yuv420p or yuv444p")
    return [np.clip(np.rint(p), 0, 255).astype(np.uint8) for p in (y, u, v)]


def video_frame(rgb: np.ndarray, pix_fmt: str = "yuv420p") -> Any:
    """An av.VideoFrame of `pix_fmt` holding `rgb`, every byte of every row set (padding zeroed).
    pix_fmt yuv420p / yuv444p are converted here; any other format is converted by PyAV from a padded
    rgb24 frame."""
    import av

    h, w = rgb.shape[:2]
    if pix_fmt in ("yuv420p", "yuv444p"):
        frame, planes = av.VideoFrame(w, h, pix_fmt), rgb_to_yuv(rgb, pix_fmt)
    else:
        frame, planes = av.VideoFrame(w, h, "rgb24"), [rgb.reshape(h, w * 3)]
    for plane, pixels in zip(frame.planes, planes):
        buf = np.zeros((plane.height, plane.line_size), np.uint8)
        buf[:, :pixels.shape[1]] = pixels
        plane.update(buf)
    return frame if pix_fmt in ("yuv420p", "yuv444p", "rgb24") else frame.reformat(format=pix_fmt)
