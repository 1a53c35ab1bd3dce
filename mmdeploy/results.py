"""The result shape, once: what `mmdeploy classify --json` prints, what the HTTP service answers (its OpenAPI
document declares these models, and the tests validate real answers against them) and, as a pyarrow schema,
the columns of `mmdeploy batch`'s Parquet results (`arrow_fields`).

- `ClassifyResult`: one file's result (POST /classify's 200 body).
- `TimelineWindow` / `TimelineResult`: a timeline's lines (one per window, then the file's result).
- `ErrorBody`: every 4xx and 503 body, {"error": "..."}.
"""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # a field added later is passed on, never dropped


class Window(_Open):
    start: float = Field(description="seconds from the start of the file")
    end: float


class Opinion(_Open):
    label: str
    score: float
    agrees: bool = Field(description="the same label as the fused answer")
    probs: dict[str, float]


class PerModality(_Open):
    """Each modality's own head, for the modalities the file has."""
    audio: Opinion | None = None
    video: Opinion | None = None


class Ranked(_Open):
    label: str
    score: float


class Timings(_Open):
    decode: float
    features: float
    infer: float = Field(description="this file's share of its model call (batched across requests)")


class ClassifyResult(_Open):
    file: str = Field(description="the upload's base name (the CLI: the path given)")
    window: Window = Field(description="the part of the file that was classified")
    label: str
    score: float
    probs: dict[str, float]
    top_k: list[Ranked]
    modalities: list[str] = Field(description="the modalities used: audio, video or both")
    per_modality: PerModality
    backend: str
    timings_ms: Timings


class WindowSummary(_Open):
    start: float
    end: float
    label: str
    score: float


class TimelineWindow(_Open):
    """One line per window, streamed as soon as the window is classified."""
    file: str
    start: float
    end: float
    label: str
    score: float
    probs: dict[str, float]
    modalities: list[str]
    per_modality: PerModality | None = Field(None, description="each modality's own head on this window (the "
                                                               "/ui page's audio and video lanes)")


class Decoding(_Open):
    """How a timeline's file was decoded: cut at keyframes into segments for several workers, or in one pass."""
    segments: int
    workers: int
    sequential: str | None = Field(None, description="why the file was decoded in one pass (null: split)")


class TimelineResult(ClassifyResult):
    """The last line: the whole file (mean of the windows), with every window."""
    windows: list[WindowSummary]
    decoding: Decoding | None = Field(None, description="the CLI's timelines: segments, workers or why one pass")


class ErrorBody(BaseModel):
    error: str = Field(description="one line naming the upload or field and the fix")


# ---- the same shape as Arrow columns -------------------------------------------------------------------
def arrow_type(annotation: Any):
    """A field annotation of the models above -> its pyarrow type (dict[str, float] is a map, a model a struct,
    `X | None` the type of X: every Parquet column is nullable)."""
    import pyarrow as pa

    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct([(name, arrow_type(f.annotation)) for name, f in annotation.model_fields.items()])
    if origin is list:
        return pa.list_(arrow_type(args[0]))
    if origin is dict:
        return pa.map_(arrow_type(args[0]), arrow_type(args[1]))
    if len(args) == 1:
        return arrow_type(args[0])
    return {str: pa.string(), float: pa.float64(), bool: pa.bool_(), int: pa.int64()}[annotation]


def arrow_fields(model: type[BaseModel] = ClassifyResult, skip: tuple[str, ...] = ("file",)) -> list:
    """pyarrow fields of `model`'s fields (in order), without `skip`."""
    import pyarrow as pa

    return [pa.field(name, arrow_type(f.annotation)) for name, f in model.model_fields.items() if name not in skip]
