"""AVClassifier: one encoder and one linear head per modality, plus a fusion; returns all logits."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from mmdeploy.errors import ConfigError
from mmdeploy.models.conformer import AudioConformer, VideoConformer
from mmdeploy.models.fusion import FUSIONS
from mmdeploy.models.resnet import AudioResNet, VideoResNet
from mmdeploy.models.tokens import masked_mean

MODALITIES = ("audio", "video")
ENCODERS = {"audio": {"resnet": AudioResNet, "conformer": AudioConformer},
            "video": {"resnet": VideoResNet, "conformer": VideoConformer}}


def default_arch() -> dict[str, Any]:
    """The paper's ResNet18 encoders with late fusion."""
    return {"audio": {"type": "resnet", "width": 64, "layers": [2, 2, 2, 2]},
            "video": {"type": "resnet", "width": 64, "layers": [2, 2, 2, 2]},
            "fusion": {"type": "late"}}


def _build_encoder(modality: str, cfg: dict[str, Any]) -> nn.Module:
    cfg = dict(cfg)
    kind = cfg.pop("type", "resnet")
    try:
        cls = ENCODERS[modality][kind]
    except KeyError:
        raise ConfigError(f"model.{modality}.type: {kind!r} unknown; choose {', '.join(ENCODERS[modality])}") from None
    try:
        return cls(**cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.{modality} ({kind}): {exc}") from None


def _build_fusion(cfg: dict[str, Any], dims: dict[str, int], num_classes: int) -> nn.Module:
    cfg = dict(cfg)
    kind = cfg.pop("type", "late")
    if kind not in FUSIONS:
        raise ConfigError(f"model.fusion.type: {kind!r} unknown; choose {', '.join(FUSIONS)}")
    try:
        return FUSIONS[kind](dims, num_classes, **cfg)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.fusion ({kind}): {exc}") from None


class AVClassifier(nn.Module):
    """forward(audio [B,1,F,T] | None, video [B,3,N,H,W] | None) -> {"fused", "audio", "video"} logits.

    With one input None, that modality's logits are None and "fused" is the present modality's own
    head (the model answers from the modality it has). Optional `lengths` {modality: [B] valid time
    steps} masks padding; `with_features=True` adds "features" {modality: pooled [B, D]} (for OGM)."""

    def __init__(self, arch: dict[str, Any], num_classes: int):
        super().__init__()
        self.arch = copy.deepcopy(arch)
        self.num_classes = num_classes
        self.encoders = nn.ModuleDict({m: _build_encoder(m, arch[m]) for m in MODALITIES})
        self.heads = nn.ModuleDict({m: nn.Linear(self.encoders[m].out_dim, num_classes) for m in MODALITIES})
        self.fusion = _build_fusion(arch.get("fusion", {"type": "late"}),
                                    {m: self.encoders[m].out_dim for m in MODALITIES}, num_classes)

    def forward(self, audio: torch.Tensor | None, video: torch.Tensor | None,
                lengths: dict[str, torch.Tensor] | None = None, with_features: bool = False
                ) -> dict[str, Any]:
        present = {m: x for m, x in (("audio", audio), ("video", video)) if x is not None}
        if not present:
            raise ValueError("AVClassifier needs at least one of audio, video")
        lengths = lengths or {}
        tokens = {m: self.encoders[m].tokens(x, lengths.get(m)) for m, x in present.items()}
        feats = {m: masked_mean(*t) for m, t in tokens.items()}
        out: dict[str, Any] = {m: self.heads[m](feats[m]) if m in feats else None for m in MODALITIES}
        if len(feats) == len(MODALITIES):
            source = {"features": feats, "tokens": tokens, "logits": {m: out[m] for m in MODALITIES}}
            out["fused"] = self.fusion(source[self.fusion.inputs])
        else:
            (only,) = feats
            out["fused"] = out[only]
        if with_features:
            out["features"] = feats
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Explicit groups for balancing: each modality = its encoder + its head + its fusion slice;
        "shared" = every other trainable tensor (e.g. the fusion bias). Together they cover every
        parameter exactly once."""
        groups = {m: [*self.encoders[m].parameters(), *self.heads[m].parameters(),
                      *self.fusion.modality_params(m)] for m in MODALITIES}
        groups["shared"] = list(self.fusion.shared_params())
        return groups


def build_model(arch: dict[str, Any], num_classes: int) -> AVClassifier:
    if not isinstance(arch, dict) or any(not isinstance(arch.get(m), dict) for m in MODALITIES):
        raise ConfigError("model: needs `audio` and `video` encoder sections (and optionally `fusion`)")
    if not isinstance(arch.get("fusion", {}), dict):
        raise ConfigError("model.fusion: must be a mapping such as {type: late}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ConfigError(f"num_classes: need an integer >= 2, got {num_classes!r}")
    return AVClassifier(arch, num_classes)
