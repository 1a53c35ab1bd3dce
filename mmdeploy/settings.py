"""Every MMDEPLOY_* environment knob, in one pydantic-settings object, read once at the edge and passed down.

The edges are the commands (`mmdeploy classify`, `batch`, `serve`) and the service module; everything
below them takes the values it needs as arguments (a decode worker gets its frame threads and the
reference-decode switch with each job, so what the parent read is what the child does). One name, one
meaning; the table in serving/README.md is `knob_table()` (a test holds the two together).

`cpu_count()` is the machine fact the defaults derive from: the cores this process may run on (its CPU
affinity, which the service narrows when it pins the model worker), never `os.cpu_count()`.
"""
from __future__ import annotations

import os
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mmdeploy.errors import ConfigError

PREFIX = "MMDEPLOY_"
DECODE_TIMEOUT_S = 60.0  # the one default: a file's first window (classify, batch, /classify) or one timeline window
DECODE_RECYCLE_JOBS = 500  # a decode process is replaced after this many jobs (isolate.RECYCLE_JOBS; 0: never)
DECODE_RECYCLE_MB = 1024.0  # ... or once its resident memory is past this after a job (isolate.RECYCLE_MB; 0: never)
RENAMED = {"MMDEPLOY_DECODE_THREADS": "it meant two things; set MMDEPLOY_DECODE_PROCESSES (decode processes per "
                                      "API worker) or MMDEPLOY_FRAME_THREADS (frame threads of a timeline's decoder)"}


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_list() -> list[int]:
    """The ids of those cores, sorted."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


class Settings(BaseSettings):
    """The knobs. A field is the environment variable named MMDEPLOY_ + the field in capitals; its
    description is the README's."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", protected_namespaces=())

    model: str | None = Field(None, description="bundle folder to serve; when set, it is used instead of the store")
    model_tag: str = Field("av-classifier:latest", description="BentoML model store tag")
    backend: str = Field("auto", description=(
        "what `mmdeploy classify --backend` takes: `auto`, a family (`onnxruntime`, `openvino`, `torch`), `tensorrt` "
        "or one backend (`openvino-int8`, `onnxruntime-cpu`, ...)"))
    max_upload_mb: float = Field(100.0, gt=0, description="larger uploads get 413")
    decode_timeout_s: float = Field(DECODE_TIMEOUT_S, gt=0, description=(
        "time limit for decoding a file (`/classify`) or one window (`/timeline`); past it the decode process is "
        "killed and the answer is 422"))
    decode_processes: int = Field(0, ge=0, description=(
        "decode processes per API worker; `0`: one per decode core (below)"))
    decode_recycle_jobs: int = Field(DECODE_RECYCLE_JOBS, ge=0, description=(
        "a decode process of the service is replaced (by a fresh one, started in the background) after this many "
        "jobs; `0`: never"))
    decode_recycle_mb: float = Field(DECODE_RECYCLE_MB, ge=0, description=(
        "... or as soon as its resident memory is past this many MB after a job; `0`: no bound"))
    model_cores: int = Field(-1, ge=-1, description=(
        "cores the model worker is pinned to (its ONNX Runtime threads); the API worker and its decode processes "
        "get the other cores. `-1`: 1 on machines with more than 2 cores, else 0 (`0`: no pinning, all share every "
        "core)"))
    max_windows: int = Field(1000, gt=0, description="most windows one `/timeline` request may take")
    batching: bool = Field(True, description="`0` turns adaptive batching off")
    max_batch: int = Field(32, gt=0, description="most windows in one model call")
    max_latency_ms: int = Field(10000, gt=0, description="longest a window may wait for the model; past it, 503")
    api_workers: int = Field(1, gt=0, description="API (decoding) processes")
    model_workers: int = Field(1, gt=0, description="model processes")
    request_timeout_s: int = Field(180, gt=0, description=(
        "time limit to the first byte of an answer (BentoML's traffic timeout; past it 504); a timeline then streams "
        "as long as its windows take. Each request holds a few KB until this passes (a BentoML timer), so it also "
        "sets how long memory climbs under load before it levels"))
    frame_threads: int = Field(1, gt=0, description=(
        "frame threads of a timeline's video decoder (CLI, batch and service); `1` (measured no slower on 2 cores, "
        "and no oversubscription beside other decoders)"))
    reference_decode: bool = Field(False, description=(
        "`1`: decode every packet (the plain full decode the fast path is checked against), everywhere"))
    live_sessions: int = Field(4, ge=0, description=(
        "most live sessions (`/live/ws`: a browser's camera and microphone, or an allowed source) at once per API "
        "worker; `0` turns live off"))
    live_session_s: float = Field(600.0, gt=0, description="longest a live session may run, seconds")
    live_idle_s: float = Field(10.0, gt=0, description="a live session that sends no data for this long is ended")
    live_max_bytes_per_s: int = Field(1_000_000, gt=0, description=(
        "most bytes a live session may send per second (a 2-s burst allowed); more ends the session"))
    live_sources: str | None = Field(None, description=(
        "comma-separated URLs the service may open for `/live/ws?source=URL` (exact match); empty: it opens no URL a "
        "request names, only streams a browser sends"))

    @field_validator("model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """The environment's values (then `overrides`, by field name); ConfigError naming the variable."""
        for old, why in RENAMED.items():
            if old in os.environ:
                raise ConfigError(f"environment variable {old} is no longer read: {why}")
        try:
            return cls(**overrides)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            name = PREFIX + str(err["loc"][0]).upper()
            raw = os.environ.get(name, err.get("input"))
            default = cls.model_fields[str(err["loc"][0])].default
            raise ConfigError(f"environment variable {name}={raw!r}: {err['msg'].lower()} "
                              f"(default {default!r})") from None

    @property
    def live_source_list(self) -> list[str]:
        """MMDEPLOY_LIVE_SOURCES as a list (empty entries dropped)."""
        return [u.strip() for u in (self.live_sources or "").split(",") if u.strip()]

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))

    def cores(self) -> tuple[list[int], list[int]]:
        """(decode cores, model cores): the model worker is pinned to the last `model_cores` of this
        process's cores and decoding to the rest; with no model cores, both share every core."""
        cpus = cpu_list()
        n = self.model_cores if self.model_cores >= 0 else (1 if len(cpus) > 2 else 0)
        if n == 0 or n >= len(cpus):
            return cpus, cpus
        return cpus[:-n], cpus[-n:]

    def decode_count(self) -> int:
        """Decode processes per API worker: MMDEPLOY_DECODE_PROCESSES, else one per decode core."""
        return self.decode_processes or len(self.cores()[0])

    def to_env(self) -> dict[str, str]:
        """Every set value as MMDEPLOY_* variables: what a child process started with them (`mmdeploy serve`
        -> `bentoml serve`) reads back as these settings."""
        out = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                out[PREFIX + name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def knob_table() -> str:
    """The markdown table of every knob (serving/README.md holds it verbatim)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else \
            f"`{int(field.default) if isinstance(field.default, bool) else _plain(field.default)}`"
        rows.append(f"| `{PREFIX}{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows)


def _plain(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
