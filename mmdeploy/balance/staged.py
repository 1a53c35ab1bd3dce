"""Unimodal pre-training then fusion: the two baselines balancing methods must beat (MCR paper, Table 1).

Stage 1 (epochs 1..E1): each encoder + its own head trains on its own cross-entropy only (the fusion is
idle: nothing reaches it). Stage 2 (epochs E1+1..train.epochs): the fused model trains from those
weights, with

- `pretrain-finetune`: every weight fine-tuned with the `finetune` method (joint by default: CE(fused);
  mlb allowed, with `finetune_params` such as {alpha: 0.8});
- `pretrain-frozen`: encoders and unimodal heads frozen (no update, BatchNorm in eval mode); only the
  fusion trains, on CE(fused).

One run folder holds both stages: metrics.jsonl rows carry `stage`, the plots mark the boundary, and only
stage-2 epochs can become the bundle (a stage-1 fused head is untrained). The optimizer's moments are
cleared when stage 2 starts (a fresh optimizer over the same tensors), at the start of epoch E1 itself, so
a run resumed from the checkpoint at the stage boundary continues exactly like the uninterrupted one. The
learning-rate schedule runs on through both stages, times `finetune_lr_scale` in stage 2.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmdeploy.balance.basic import MLB, Joint, unimodal_loss
from mmdeploy.balance.core import Outputs, Params, drop_grads, unimodal_params, unwrap
from mmdeploy.errors import ConfigError

PRETRAIN_EPOCHS = Field(None, ge=1, description="null (half of train.epochs) or an integer >= 1, below train.epochs")
LR_SCALE = Field(1.0, gt=0, description="a number > 0 (stage 2's learning rate = the schedule's x this; the "
                                        "paper pre-trains at 1e-3 and fine-tunes at 1e-4: 0.1)")


def resolve_pretrain_epochs(method: str, value: int | None, epochs: int, allow_zero: bool = False) -> int:
    """Stage-1 epoch count: `value`, or half of `epochs` when null; stage 2 must keep at least one epoch."""
    e1 = max(1, epochs // 2) if value is None else value
    if e1 >= epochs or (e1 == 0 and not allow_zero and value is not None):
        raise ConfigError(f"method.pretrain_epochs: {method} pre-trains {e1} of train.epochs={epochs} epochs, "
                          "which leaves no epoch for stage 2; choose fewer pre-training epochs or raise train.epochs")
    return e1


class Staged:
    """Bookkeeping shared by every method with a unimodal pre-training stage (epochs < `pretrain`)."""

    pretrain: int = 0
    epoch: int = 0
    finetune_lr_scale: float = 1.0

    def in_pretraining(self) -> bool:
        return self.epoch < self.pretrain

    def stage(self, epoch: int) -> int | None:
        return (1 if epoch < self.pretrain else 2) if self.pretrain else None

    def selectable(self, epoch: int) -> bool:
        return epoch >= self.pretrain

    def lr_factor(self, epoch: int) -> float:
        return self.finetune_lr_scale if self.pretrain and epoch >= self.pretrain else 1.0

    def begin_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        self.epoch = epoch
        if self.pretrain and epoch == self.pretrain:
            optimizer.state.clear()

    def stage_notes(self, second: str) -> dict[str, Any]:
        return {"pretrain_epochs": self.pretrain,
                "stages": {"1": f"epochs 1-{self.pretrain}: each encoder + its head on its own cross-entropy "
                                "(unimodal pre-training; fusion idle)", "2": second}}


class FinetuneParams(Params):
    pretrain_epochs: int | None = PRETRAIN_EPOCHS
    finetune: Literal["joint", "mlb"] = Field("joint", description="joint or mlb (the stage-2 method)")
    finetune_params: dict[str, Any] = Field(default_factory=dict,
                                            description="the stage-2 method's parameters, e.g. {alpha: 0.8}")
    finetune_lr_scale: float = LR_SCALE


class PretrainFinetune(Staged, Joint):
    """Unimodal pre-training for `pretrain_epochs`, then every weight fine-tuned with `finetune`."""

    name = "pretrain-finetune"
    Params = FinetuneParams
    trains_heads = False  # stage 2 joint: the heads are idle
    heads_trained = True

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.inner = MLB(**self.finetune_params) if self.finetune == "mlb" else self._joint(self.finetune_params)
        self.inner.reduce = lambda t: self.reduce(t)  # the trainer sets self.reduce under DDP

    @staticmethod
    def _joint(params: dict[str, Any]) -> Joint:
        if params:
            raise ConfigError(f"method.finetune_params: finetune joint takes no parameters, got {params!r}")
        return Joint()

    def setup(self, model: nn.Module, epochs: int) -> list[nn.Parameter]:
        self.pretrain = resolve_pretrain_epochs(self.name, self.pretrain_epochs, epochs)
        self.notes = self.stage_notes(f"epochs {self.pretrain + 1}-{epochs}: all weights fine-tuned with "
                                      f"{self.finetune}" + (f" {self.finetune_params}" if self.finetune_params else ""))
        return []

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        if self.in_pretraining():
            return unimodal_loss(outputs, labels)
        return self.inner.loss(outputs, labels)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        if self.in_pretraining():
            return {}
        return self.inner.after_backward(model, outputs, labels, epoch)


class FrozenParams(Params):
    pretrain_epochs: int | None = PRETRAIN_EPOCHS
    finetune_lr_scale: float = LR_SCALE


class PretrainFrozen(Staged, Joint):
    """Unimodal pre-training for `pretrain_epochs`, then encoders and heads frozen: only the fusion trains."""

    name = "pretrain-frozen"
    Params = FrozenParams
    trains_heads = False
    heads_trained = True

    def setup(self, model: nn.Module, epochs: int) -> list[nn.Parameter]:
        self.pretrain = resolve_pretrain_epochs(self.name, self.pretrain_epochs, epochs)
        self.notes = self.stage_notes(f"epochs {self.pretrain + 1}-{epochs}: encoders and unimodal heads frozen "
                                      "(BatchNorm in eval mode); only the fusion trains, on CE(fused)")
        return []

    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        if not self.in_pretraining():
            core = unwrap(model)
            core.encoders.eval()  # frozen BatchNorm statistics; the trainer puts the model in train mode
            core.heads.eval()
        return model(audio, video)

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        if self.in_pretraining():
            return unimodal_loss(outputs, labels)
        return F.cross_entropy(outputs["fused"], labels)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        if not self.in_pretraining():
            drop_grads(unimodal_params(unwrap(model)))
        return {}
