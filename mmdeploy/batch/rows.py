"""Results <-> RESULTS rows, and the assembly of a file's rows when they arrive window by window."""
from __future__ import annotations

from typing import Any

from mmdeploy.batch.inputs import Source
from mmdeploy.batch.parquet import RESULT_FIELDS

NO_WINDOW = "no window could be decoded"


def result_row(result: dict[str, Any], src: Source, model: str) -> dict[str, Any]:
    """A classify result dict (or {"file", "error"}) for `src` -> one RESULTS row (missing fields null)."""
    row = {k: result.get(k) for k in RESULT_FIELDS}
    row.update(path=src.path, file_id=src.file_id, size=src.size, mtime_ns=src.mtime_ns, model_id=model)
    row.update(src.carry)
    return row


def error_row(src: Source, reason: str, model: str) -> dict[str, Any]:
    return result_row({"error": reason}, src, model)


def to_result(row: dict[str, Any]) -> dict[str, Any]:
    """A RESULTS row (as read back, e.g. from `read_results`) -> the classify --json shape."""
    out = {"file": row["path"]}
    if row.get("error") is not None:
        return {**out, "error": row["error"]}
    out.update({k: row[k] for k in ("window", "label", "score") if k in row})
    out["probs"] = dict(row["probs"])
    out.update(top_k=row["top_k"], modalities=row["modalities"],
               per_modality={m: {**v, "probs": dict(v["probs"])} for m, v in (row["per_modality"] or {}).items()
                             if v is not None},
               backend=row["backend"], timings_ms=row["timings_ms"])
    return out


class Assembler:
    """Rows arrive window by window, possibly out of order and (after a retried task) twice; a file is
    complete once as many distinct rows as its count (`_rows`, carried on one of them, or on a row with
    `_end_only`) have arrived. Only complete files go to the writer.

    A file split into segments (ray_segments.expand: rows with `_segment` {index, of}) counts each segment so,
    and is complete with its last segment: then its segments' rows, in order, as the sequential decode gives
    them (join_segments)."""

    def __init__(self):
        self.pending: dict[Any, dict[Any, dict[str, Any]]] = {}
        self.expected: dict[Any, int] = {}
        self.segments: dict[str, dict[int, list[dict[str, Any]]]] = {}  # file_id -> its complete segments

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Add one row; the file's rows (windows by start, an error row last) once complete, else None."""
        fid = row["file_id"]
        n = row.pop("_rows", 0)
        end_only = row.pop("_end_only", False)
        seg = row.pop("_segment", None)
        key = fid if seg is None else (fid, seg["index"])
        if seg is not None and seg["index"] in self.segments.get(fid, {}):
            return None  # a retried segment task sent it again
        rows = self.pending.setdefault(key, {})
        if n or end_only:  # (an end-only row's count may be 0: a segment without windows)
            self.expected[key] = n
        if not end_only:
            wkey = "error" if row.get("error") is not None else (row.get("window") or {}).get("start")
            rows[wkey] = row
        if self.expected.get(key) != len(rows):
            return None
        del self.pending[key], self.expected[key]
        done = sorted(rows.values(), key=lambda r: (r.get("error") is not None,
                                                    (r.get("window") or {}).get("start") or 0.0))
        if seg is None:
            return done
        parts = self.segments.setdefault(fid, {})
        parts[seg["index"]] = done
        if len(parts) < seg["of"]:
            return None
        del self.segments[fid]
        return join_segments([parts[i] for i in range(seg["of"])])


def join_segments(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """A split file's segments' rows (each: its windows by start, then its error row if it failed), in segment
    order -> the file's rows as the sequential decode gives them: the windows up to the first failing segment's
    error row, which ends the file (the sequential decode stops there, so later segments' windows are dropped).
    [] when no segment held a window (the caller writes the file's error row)."""
    out: list[dict[str, Any]] = []
    for rows in parts:
        out.extend(rows)
        if rows and rows[-1].get("error") is not None:
            break
    return out
