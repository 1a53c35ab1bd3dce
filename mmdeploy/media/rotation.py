"""Display rotation: the display matrix of a frame (side data) or of an MP4/MOV track header (read from the
moov box with a small ISO-BMFF box parser, never reading mdat), applied to RGB frames like ffmpeg's autorotate."""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Iterator

import numpy as np


def display_matrix(frame) -> tuple[int, ...] | None:
    import av

    for side in frame.side_data:
        if side.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            data = bytes(side)
            if len(data) >= 36:
                return struct.unpack("<9i", data[:36])
    return None


def matrix_rotation(m: tuple[int, ...]) -> int:
    """av_display_rotation_get rounded: degrees counter-clockwise, in (-180, 180]."""
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return 0
    deg = -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))
    deg = int(round(deg)) % 360
    return deg - 360 if deg > 180 else deg


def orient(rgb: np.ndarray, m: tuple[int, ...] | None) -> np.ndarray:
    """Apply a display matrix like ffmpeg's autorotate (transpose / hflip / vflip)."""
    if m is None:
        return rgb
    theta = (-matrix_rotation(m)) % 360  # clockwise degrees, as ffmpeg's get_rotation
    if abs(theta - 90) < 1:
        out = rgb.transpose(1, 0, 2) if m[3] > 0 else np.rot90(rgb, -1)  # cclock_flip : clock
    elif abs(theta - 180) < 1:
        out = rgb[:, ::-1] if m[0] < 0 else rgb
        out = out[::-1] if m[4] < 0 else out
    elif abs(theta - 270) < 1:
        out = np.rot90(rgb, -1)[::-1] if m[3] < 0 else np.rot90(rgb, 1)  # clock_flip : cclock
    else:
        out = rgb[::-1] if m[4] < 0 else rgb
    return np.ascontiguousarray(out)


def stored_rotation(path, container, stream) -> int:
    """Rotation from the MP4/MOV track header (where display matrices live); 0 elsewhere."""
    if "mov" not in container.format.name and "mp4" not in container.format.name:
        return 0
    try:
        matrices = track_matrices(Path(path))
    except (OSError, struct.error, ValueError):
        return 0
    m = matrices.get(stream.id)
    return matrix_rotation(m) if m else 0


def track_matrices(path: Path) -> dict[int, tuple[int, ...]]:
    """{track_ID: tkhd matrix as 9 ints} read from the moov box, skipping mdat without reading it."""
    out: dict[int, tuple[int, ...]] = {}
    with path.open("rb") as f:
        size = path.stat().st_size
        for kind, offset, length in boxes(f, 0, size):
            if kind != b"moov":
                continue
            for tkind, toff, tlen in boxes(f, offset, offset + length):
                if tkind != b"trak":
                    continue
                for hkind, hoff, hlen in boxes(f, toff, toff + tlen):
                    if hkind == b"tkhd":
                        f.seek(hoff)
                        data = f.read(min(hlen, 104))
                        version = data[0]
                        ids = 12 if version == 0 else 20  # after version/flags + creation/modification
                        track_id = struct.unpack(">I", data[ids:ids + 4])[0]
                        matrix_at = ids + 4 + 4 + (4 if version == 0 else 8) + 8 + 2 + 2 + 2 + 2
                        out[track_id] = struct.unpack(">9i", data[matrix_at:matrix_at + 36])
            break
    return out


def boxes(f, begin: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload offset, payload length) of the ISO-BMFF boxes in [begin, end)."""
    pos = begin
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1 and len(head) == 16:
            size, header = struct.unpack(">Q", head[8:16])[0], 16
        elif size == 0:
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, min(size, end - pos) - header
        pos += size
