"""Fusions of the two feature vectors into fused logits.

Each fusion declares which of its parameters belong to which modality (`modality_params`) and which are
shared (`shared_params`), so balancing scales explicit tensors, never names matched by substring.
"""
from __future__ import annotations

import torch
from torch import nn


class LateFusion(nn.Module):
    """The paper's default: z = W_a f_a + W_v f_v + b, one linear layer on the concatenation, with the
    weight kept as two per-modality matrices so each modality's slice is its own tensor."""

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        self.weights = nn.ModuleDict({m: nn.Linear(d, num_classes, bias=False) for m, d in dims.items()})
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[m](f) for m, f in feats.items()) + self.bias

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return list(self.weights[modality].parameters())

    def shared_params(self) -> list[nn.Parameter]:
        return [self.bias]


FUSIONS = {"late": LateFusion}
