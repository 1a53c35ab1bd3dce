"""The method protocol, and the methods whose loss is plain cross-entropy: joint, multi-loss, ensemble, MLB.

One training step, for every method:

    outputs = method.forward(model, audio, video)            # model(audio, video); some methods add passes
    method.loss(outputs, labels).backward()
    logs = method.after_backward(model, outputs, labels, epoch)   # scales grads; floats to log
    optimizer.step()

Around the steps the trainer calls `arch` (the architecture the method trains), `setup` (trainable
tensors the method owns, e.g. MCR's decoder, handed to the optimizer), `begin_epoch` (stage switches) and
`selectable` (which epochs may become the bundle). Under DDP the trainer sets `method.reduce` to the
mean of a tensor over ranks: scores pass through it before any coefficient is computed, so every rank
applies the same k to the same averaged gradient.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from mmdeploy.balance.core import (EpochWindow, GroupCache, Outputs, Params, check_params, check_window,
                                   identity, logs, modality_groups, others_mean, scale_grads,
                                   true_class_scores)
from mmdeploy.errors import ConfigError


def mlb_ratios(scores: torch.Tensor) -> torch.Tensor:
    """r_m = mean of the other modalities' scores / s_m (r > 1: modality m is behind)."""
    return others_mean(scores) / scores.clamp_min(torch.finfo(scores.dtype).tiny)


def mlb_coefficients(ratios: torch.Tensor, alpha: float, beta: float | None = None) -> torch.Tensor:
    """k = 1 + tanh(alpha (r - 1)); beta variant: 1 + (beta - 1) tanh(alpha (r - 1)) where r > 1."""
    t = torch.tanh(alpha * (ratios - 1.0))
    if beta is None:
        return 1.0 + t
    return 1.0 + torch.where(ratios > 1.0, (beta - 1.0) * t, t)


def unimodal_loss(outputs: Outputs, labels: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """weight * sum over present modalities of CE(head logits) (0 when no head is present)."""
    terms = [F.cross_entropy(outputs[m], labels) for m in ("audio", "video") if outputs.get(m) is not None]
    return weight * torch.stack(terms).sum() if terms else outputs["fused"].new_zeros(())


class NoParams(Params):
    pass


class Joint:
    """Single-loss joint training: CE(fused) only; the unimodal heads get no gradient.

    `trains_heads` says whether every step's loss reaches the unimodal heads (DDP needs
    find_unused_parameters=True when it does not); `heads_trained` whether the heads are ever trained
    (their accuracy means something)."""

    name = "joint"
    Params: type[Params] = NoParams
    trains_heads = False
    heads_trained = False

    def __init__(self, **params: Any):
        self.params = check_params(self.name, self.Params, params)
        for key, value in self.params.model_dump().items():
            setattr(self, key, value)
        self.reduce: Callable[[torch.Tensor], torch.Tensor] = identity
        self.notes: dict[str, Any] = {}

    # ---- hooks around the steps (defaults: nothing to do)
    def arch(self, arch: dict[str, Any]) -> dict[str, Any]:
        """The architecture this method trains (the recipe's, unless the method needs another)."""
        return arch

    def setup(self, model: nn.Module, epochs: int) -> list[nn.Parameter]:
        """Called once with the built model and the recipe's epoch count; returns extra trainable tensors."""
        return []

    def begin_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Called at the start of every epoch (0-based), also the first one after a resume."""

    def stage(self, epoch: int) -> int | None:
        """Training stage of `epoch` for the logs (None: a one-stage method)."""
        return None

    def selectable(self, epoch: int) -> bool:
        """Whether `epoch` may become the bundle (a pre-training stage's fused head is not the model)."""
        return True

    def lr_factor(self, epoch: int) -> float:
        """Factor on the schedule's learning rate during `epoch` (stage 2 of a two-stage method)."""
        return 1.0

    def state_dict(self) -> dict[str, Any]:
        """Running statistics for an exact --resume (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # ---- the step
    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        return model(audio, video)

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs["fused"], labels)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        return {}


class MultiLoss(Joint):
    """CE(fused) + CE(audio) + CE(video), no modulation (heads of absent modalities are skipped)."""

    name = "multiloss"
    trains_heads = True
    heads_trained = True

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs["fused"], labels) + unimodal_loss(outputs, labels)


def prob_mean_arch(arch: dict[str, Any]) -> dict[str, Any]:
    """`arch` with its fusion replaced by the parameter-free mean of the unimodal probabilities."""
    return {**arch, "fusion": {"type": "prob-mean"}}


class Ensemble(Joint):
    """An ensemble of two unimodal models: each encoder + head trained on its own CE only; the prediction
    is the mean of the unimodal probabilities. The model's fusion is `prob-mean` (no parameters; it
    outputs log of that mean, so softmax of the exported "fused" output is the ensemble's probability);
    the recipe's fusion head is not built, and the bundle says so."""

    name = "ensemble"
    trains_heads = True
    heads_trained = True

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.notes = {"fused_head": "none: the recipe's fusion is replaced by prob-mean; the prediction is the "
                                    "mean of the audio and video heads' softmax probabilities (fused output = "
                                    "its log)"}

    def arch(self, arch: dict[str, Any]) -> dict[str, Any]:
        return prob_mean_arch(arch)

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return unimodal_loss(outputs, labels)


class MLBParams(Params):
    alpha: float = Field(0.8, gt=0, description="a number > 0 (tanh sharpness, e.g. 0.8)")
    beta: float | None = Field(None, ge=1, description="null or a number >= 1 (largest k of a lagging modality)")
    variant: Literal["tanh", "beta"] | None = Field(None, description="tanh or beta")
    start_epoch: int = Field(0, ge=0, description="an integer >= 0")
    end_epoch: int | None = Field(None, ge=0, description="null or an integer >= start_epoch")

    @model_validator(mode="after")
    def _consistent(self) -> "MLBParams":
        variant = self.variant or ("beta" if self.beta is not None else "tanh")
        if variant == "beta" and self.beta is None:
            raise ConfigError("method.beta: mlb variant beta needs beta (the largest k of a lagging modality, "
                              "e.g. 10); without it the lagging modality would be slowed down instead")
        if variant == "tanh" and self.beta is not None:
            raise ConfigError("method.beta: only used by mlb variant beta; remove beta or set variant: beta")
        check_window("mlb", self.start_epoch, self.end_epoch)
        return self


class MLB(MultiLoss, EpochWindow):
    """Multi-loss balanced gradient modulation (Kontras et al., BMVC 2024).

    After backward: s_m from the unimodal heads, r_m = others / self, k_m = 1 + tanh(alpha (r_m - 1))
    (variant "beta": 1 + (beta - 1) tanh(...) where r_m > 1), grads of group m *= k_m, within
    [start_epoch, end_epoch]. `beta` alone selects the beta variant; `variant: beta` without `beta` is
    an error (the reference silently used beta = 0 there, turning the speed-up into a slow-down)."""

    name = "mlb"
    Params = MLBParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.groups = GroupCache(modality_groups)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        groups = self.groups(model)
        mods = [m for m in groups if outputs.get(m) is not None]
        if len(mods) < 2:
            return {}
        with torch.no_grad():
            scores = self.reduce(true_class_scores(torch.stack([outputs[m].detach() for m in mods]), labels))
            ratios = mlb_ratios(scores)
            if self.active(epoch):
                k = mlb_coefficients(ratios, self.alpha, self.beta)
                scale_grads([groups[m] for m in mods], k)
            else:
                k = torch.ones_like(ratios)
        return logs(mods, s=scores, r=ratios, k=k)


def log_mean_probs(logits: list[torch.Tensor]) -> torch.Tensor:
    """log((1/M) sum_m softmax(z_m)): what the ensemble predicts, as logits (pure; used by the fusion too)."""
    return torch.logsumexp(torch.stack([F.log_softmax(z, dim=-1) for z in logits]), dim=0) - math.log(len(logits))
