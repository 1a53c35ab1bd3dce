"""Deploy targets: export/NAME.yaml -> Target (backend, device, precision, batch profile, providers, parity
tolerance; for the CPU engines also the accuracy gate and the calibration set).

    backend: onnxruntime | openvino | tensorrt | torch     precision: fp32 | fp16 | bf16 | int8
    gate: {max_drop: 1.0, min_agreement: 0.99, windows: 256, max_abs: null}   (bf16 / int8 targets)
    calibration: {windows: 300, seed: 0, quantizer: auto}                      (int8 targets)

The gate (mmdeploy/cpu_engines.py) fails the export when the engine's test-split accuracy is more than
`max_drop` points below fp32, its top-1 agreement with fp32 on held-out windows is below `min_agreement`, or
(when set) its largest logit difference exceeds `max_abs`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mmdeploy.config import read_yaml, validate
from mmdeploy.errors import ConfigError

FP32_LAYER_KINDS = ("softmax", "normalization", "reduce", "pooling")
QUANTIZERS = ("auto", "onnxruntime", "nncf")


@dataclass(frozen=True)
class Target:
    """One deploy target (export/NAME.yaml)."""

    name: str
    backend: str = "onnxruntime"  # onnxruntime | openvino | tensorrt | torch
    device: str = "cpu"  # cpu | cuda
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8
    batch: dict[str, int] = field(default_factory=lambda: {"min": 1, "opt": 1, "max": 32})
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    tolerance: float = 1e-4
    parity_batches: tuple[int, ...] = (1, 5)
    fp32_layers: tuple[str, ...] = ()
    cuda_graphs: bool = False
    description: str = ""
    gate: dict[str, Any] = field(default_factory=lambda: Gate().model_dump())
    calibration: dict[str, Any] = field(default_factory=lambda: Calibration().model_dump())

    @property
    def cpu_engine(self) -> bool:
        """Whether `mmdeploy export` makes, gates and times a CPU engine for this target."""
        return self.device == "cpu" and (self.backend == "openvino" or self.precision == "int8")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class BatchProfile(_Strict):
    min: int
    opt: int
    max: int

    @model_validator(mode="before")
    @classmethod
    def _whole(cls, data: Any) -> Any:
        if not isinstance(data, dict) or set(data) != {"min", "opt", "max"} or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
            raise ValueError(f"needs integer min, opt and max, got {data!r}")
        if not 1 <= data["min"] <= data["opt"] <= data["max"]:
            raise ValueError(f"needs 1 <= min <= opt <= max, got {data!r}")
        return data


class Parity(_Strict):
    tolerance: float = Field(1e-4, gt=0)
    batches: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 5], min_length=1)


class Gate(_Strict):
    """The accuracy gate of a bf16 / int8 engine against fp32 (points are percentage points)."""
    max_drop: float = Field(1.0, ge=0, allow_inf_nan=False)
    min_agreement: float = Field(0.99, ge=0, le=1)
    windows: int = Field(256, ge=1, le=100_000)
    max_abs: float | None = Field(None, gt=0)


class Calibration(_Strict):
    """int8 calibration: `windows` drawn with `seed` from the bundle's training split (through its feature
    cache), random inputs when the bundle records no manifest; the quantizer, or auto: each one installed,
    the one whose engine passes the gate and runs fastest."""
    windows: int = Field(300, ge=1, le=100_000)
    seed: int = 0
    quantizer: Literal[QUANTIZERS] = "auto"


class TargetFile(_Strict):
    """The keys of export/NAME.yaml."""
    description: str = ""
    backend: Literal["onnxruntime", "openvino", "tensorrt", "torch"] = "onnxruntime"
    device: Literal["cpu", "cuda"] = "cpu"
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    batch: BatchProfile = Field(default_factory=lambda: BatchProfile(min=1, opt=1, max=32))
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    parity: Parity = Field(default_factory=Parity)
    fp32_layers: list[Literal[FP32_LAYER_KINDS]] = Field(default_factory=list)
    cuda_graphs: bool = False
    gate: Gate = Field(default_factory=Gate)
    calibration: Calibration = Field(default_factory=Calibration)

    @model_validator(mode="after")
    def _consistent(self) -> "TargetFile":
        if self.backend == "tensorrt" and min(self.parity.batches) < self.batch.min:
            raise ValueError(f"parity.batches: {min(self.parity.batches)} is below the engine profile's batch.min "
                             f"{self.batch.min}")
        if self.backend == "openvino" and (self.device != "cpu" or self.precision == "fp16"):
            raise ValueError("backend openvino: runs on device cpu in precision fp32, bf16 or int8")
        if self.precision == "bf16" and self.backend != "openvino":
            raise ValueError(f"precision bf16: needs backend openvino (got {self.backend})")
        if self.precision == "int8" and (self.backend not in ("onnxruntime", "openvino") or self.device != "cpu"):
            raise ValueError(f"precision int8: needs backend onnxruntime or openvino on device cpu "
                             f"(got {self.backend} on {self.device})")
        return self


def load_target(name_or_path: str | Path) -> Target:
    """Read and validate export/NAME.yaml (or any YAML path); unknown keys raise ConfigError."""
    from mmdeploy import assets

    path = Path(name_or_path)
    if not path.is_file():  # a shipped target by name: `onnx-cpu`, or `export/onnx-cpu.yaml` from anywhere
        path = assets.by_name("export", path.name if path.parent.name == "export" else path) or path
    if not path.is_file():
        known = ", ".join(assets.names("export"))
        raise ConfigError(f"{path}: no such deploy target; use one of {known} or a YAML path")
    return parse_target(read_yaml(path, "deploy target keys"), name=path.stem, where=str(path))


def parse_target(data: dict[str, Any], name: str, where: str) -> Target:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of target keys")
    t = validate(TargetFile, data, where)
    return Target(name=name, backend=t.backend, device=t.device, precision=t.precision, batch=t.batch.model_dump(),
                  providers=tuple(t.providers), tolerance=float(t.parity.tolerance),
                  parity_batches=tuple(t.parity.batches), fp32_layers=tuple(t.fp32_layers), cuda_graphs=t.cuda_graphs,
                  description=t.description, gate=t.gate.model_dump(), calibration=t.calibration.model_dump())
