"""What every balancing method shares: pure functions over scores, parameter groups, and parameter checks.

Scores are batch means computed on the logits' device with one gather (no per-sample loops). Parameter
groups come from `model.param_groups()` (read once per model, DDP's `.module` unwrapped): modality m =
its encoder + its head + its fusion slice; "shared" (e.g. the fusion bias) is never scaled.

Method parameters are validated by one pydantic model per method (`Params` subclasses): unknown keys,
wrong types and out-of-range values raise ConfigError naming `method.<key>` and what it needs; numbers
such as `1e-4` are floats (also when a YAML 1.1 reader left them as the string "1e-4"), integers are
accepted where a float is meant, booleans and other strings never are.
"""
from __future__ import annotations

import re
import types
import typing
from typing import Any, Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from torch import nn

from mmdeploy.errors import ConfigError

Outputs = dict[str, Any]


# ---------------------------------------------------------------- pure functions over scores

def true_class_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[M, B, C] logits, [B] labels -> [M, B]: softmax probability of the true class, per head and sample."""
    index = labels.reshape(1, -1, 1).expand(logits.shape[0], -1, 1)
    return logits.softmax(dim=-1).gather(2, index).squeeze(2)


def true_class_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[M, B, C], [B] -> [M]: s_m, the batch mean of head m's true-class probability."""
    return true_class_probs(logits, labels).mean(dim=1)


def true_class_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[M, B, C], [B] -> [M]: batch mean of -log p(true class), probabilities clamped at 1e-8 (AGM)."""
    return -true_class_probs(logits, labels).clamp_min(1e-8).log().mean(dim=1)


def others_mean(values: torch.Tensor) -> torch.Tensor:
    """[M] -> [M]: for each m, the mean of the other M-1 entries (M >= 2)."""
    if values.shape[0] < 2:
        raise ValueError(f"balancing needs at least 2 modalities, got {values.shape[0]}")
    return (values.sum() - values) / (values.shape[0] - 1)


def scale_grads(groups: Sequence[Sequence[torch.Tensor]], coefficients: torch.Tensor) -> None:
    """grad *= k_m for every parameter of group m (one fused multiply per group, k stays on device)."""
    for params, k in zip(groups, coefficients):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, k)


def drop_grads(params: Sequence[torch.Tensor]) -> None:
    """grad = None: the optimizer then leaves the parameter (and its moments) untouched this step."""
    for p in params:
        p.grad = None


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def logs(modalities: Sequence[str], **values: torch.Tensor) -> dict[str, float]:
    """{"k_audio": .., "s_video": ..}: one device->host copy for all logged numbers."""
    rows = torch.stack(list(values.values())).tolist()
    return {f"{key}_{m}": v for key, row in zip(values, rows) for m, v in zip(modalities, row)}


# ---------------------------------------------------------------- parameter groups

class GroupCache:
    """Parameter groups of one model, computed once (by `pick(core_model)`) and reused every step."""

    def __init__(self, pick: Callable[[nn.Module], dict[str, list[torch.Tensor]]]):
        self.pick = pick
        self.model: nn.Module | None = None
        self.groups: dict[str, list[torch.Tensor]] = {}

    def __call__(self, model: nn.Module) -> dict[str, list[torch.Tensor]]:
        core = unwrap(model)
        if core is not self.model:
            self.model, self.groups = core, self.pick(core)
        return self.groups


def unwrap(model: nn.Module) -> nn.Module:
    """The AVClassifier inside a DDP wrapper (or the model itself)."""
    return getattr(model, "module", model)


def modality_groups(core: nn.Module) -> dict[str, list[torch.Tensor]]:
    """{modality: encoder + head + fusion slice} (MLB's grouping, the reference's name matching made explicit)."""
    return {m: params for m, params in core.param_groups().items() if m != "shared"}


def encoder_groups(core: nn.Module) -> dict[str, list[torch.Tensor]]:
    """{modality: encoder only} (OGM, MSLR)."""
    return {m: list(encoder.parameters()) for m, encoder in core.encoders.items()}


def unimodal_params(core: nn.Module) -> list[torch.Tensor]:
    """Every encoder and unimodal head parameter (what unimodal pre-training trains and freezing keeps)."""
    return [*core.encoders.parameters(), *core.heads.parameters()]


# ---------------------------------------------------------------- parameter checks

_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _takes_float(annotation: Any) -> bool:
    return annotation is float or (typing.get_origin(annotation) in (typing.Union, types.UnionType)
                                   and float in typing.get_args(annotation))


class Params(BaseModel):
    """Base of a method's parameter model: unknown keys refused, no type coercion except int -> float and
    a number in scientific notation left as a string by a YAML 1.1 reader ("1e-4" -> 0.0001)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _scientific_floats(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: float(v) if isinstance(v, str) and _SCIENTIFIC.match(v.strip()) and k in cls.model_fields
                and _takes_float(cls.model_fields[k].annotation) else v for k, v in data.items()}


def check_params(method: str, schema: type[Params], params: dict[str, Any]) -> Params:
    """`schema` validated from the recipe's method keys; problems raise ConfigError naming method.<key>."""
    try:
        return schema.model_validate(params)
    except ValidationError as exc:
        raise ConfigError(_describe(method, schema, exc)) from None


def _describe(method: str, schema: type[Params], exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "constrained-"))]
    key = ".".join(loc)
    known = list(schema.model_fields)
    if err["type"] == "extra_forbidden":
        return f"method.{key}: not a parameter of {method} (it takes {', '.join(known) or 'none'}); remove it"
    field = schema.model_fields.get(loc[0]) if loc else None
    need = field.description if field is not None and field.description else err["msg"]
    return f"method.{key}: {method} needs {need}, got {err.get('input')!r}"


class EpochWindow:
    """Modulation is active for start_epoch <= epoch <= end_epoch (None: no end)."""

    start_epoch: int
    end_epoch: int | None

    def active(self, epoch: int) -> bool:
        return self.start_epoch <= epoch and (self.end_epoch is None or epoch <= self.end_epoch)


def check_window(method: str, start: int, end: int | None) -> None:
    if end is not None and end < start:
        raise ConfigError(f"method.end_epoch: {method} needs null or an integer >= start_epoch ({start}), got {end!r}")


class EpochStats:
    """Per-epoch sums kept on the device: `add` every step, `close` when a new epoch starts."""

    def __init__(self):
        self.epoch: int | None = None
        self.sums: torch.Tensor | None = None

    def add(self, epoch: int, values: torch.Tensor) -> torch.Tensor | None:
        """Accumulate `values`; returns the previous epoch's sums when `epoch` is a new one, else None."""
        closed = None
        if self.epoch is not None and epoch != self.epoch:
            closed, self.sums = self.sums, None
        self.epoch = epoch
        self.sums = values.clone() if self.sums is None else self.sums + values
        return closed

    def state_dict(self) -> dict[str, Any]:
        return {"stats.epoch": self.epoch, **({"stats.sums": self.sums} if self.sums is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.sums = state.get("stats.epoch"), state.get("stats.sums")
