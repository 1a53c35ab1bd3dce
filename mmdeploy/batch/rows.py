"""Results <-> RESULTS rows, and the assembly of a file's rows when they arrive window by window."""
from __future__ import annotations

from typing import Any

from mmdeploy.batch.inputs import Source
from mmdeploy.batch.parquet import RESULT_FIELDS


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
    `_end_only`) have arrived. Only complete files go to the writer."""

    def __init__(self):
        self.pending: dict[str, dict[Any, dict[str, Any]]] = {}
        self.expected: dict[str, int] = {}

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Add one row; the file's rows (windows by start, an error row last) once complete, else None."""
        fid = row["file_id"]
        n = row.pop("_rows", 0)
        rows = self.pending.setdefault(fid, {})
        if n:
            self.expected[fid] = n
        if not row.pop("_end_only", False):
            key = "error" if row.get("error") is not None else (row.get("window") or {}).get("start")
            rows[key] = row
        if self.expected.get(fid) != len(rows):
            return None
        del self.pending[fid], self.expected[fid]
        return sorted(rows.values(), key=lambda r: (r.get("error") is not None,
                                                    (r.get("window") or {}).get("start") or 0.0))
