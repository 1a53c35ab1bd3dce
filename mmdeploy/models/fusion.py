"""Fusions: per-modality inputs -> fused logits [B, C].

`inputs` says what a fusion consumes: "features" (pooled [B, D_m]), "logits" (each encoder's own head,
[B, C]) or "tokens" ((tokens [B, L_m, D_m], mask [B, L_m] | None) per modality).

Each fusion names its parameters explicitly for balancing: `modality_params(m)` are scaled with
modality m, `shared_params()` never are. The split follows what the name matching in the MLB
paper's code scales: a fusion's per-modality input weight belongs to that modality; biases and
everything after the modalities meet are shared.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _positive_int(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _dropout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {value!r}")
    return float(value)


class LateFusion(nn.Module):
    """The paper's default: z = W_a f_a + W_v f_v + b (one linear layer on the concatenation).
    Modality m: W_m. Shared: b."""

    inputs = "features"

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        self.weights = nn.ModuleDict({m: nn.Linear(d, num_classes, bias=False) for m, d in dims.items()})
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[m](f) for m, f in feats.items()) + self.bias

    def partial_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """OGM's per-modality share of the fused logits: W_m f_m + b / M (they sum to z)."""
        share = self.bias / len(self.weights)
        return {m: self.weights[m](f) + share for m, f in feats.items()}

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return list(self.weights[modality].parameters())

    def shared_params(self) -> list[nn.Parameter]:
        return [self.bias]


class SumFusion(nn.Module):
    """z = z_a + z_v, the sum of the encoders' own heads ("dec" in the paper). No parameters: each
    head is already scaled with its modality."""

    inputs = "logits"

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()

    def forward(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(logits.values())

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return []

    def shared_params(self) -> list[nn.Parameter]:
        return []


class FiLMFusion(nn.Module):
    """Audio conditions video: [gamma, beta] = Linear(f_a); z = Linear(gamma * f_v + beta).
    All parameters shared: the paper scales none of FiLM's layers (they act on both modalities)."""

    inputs = "features"

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()
        self.film = nn.Linear(dims["audio"], 2 * dims["video"])
        self.out = nn.Linear(dims["video"], num_classes)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        gamma, beta = self.film(feats["audio"]).chunk(2, dim=-1)
        return self.out(gamma * feats["video"] + beta)

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return []

    def shared_params(self) -> list[nn.Parameter]:
        return [*self.film.parameters(), *self.out.parameters()]


class GatedFusion(nn.Module):
    """g = sigmoid(Linear(f_a)); z = Linear(g * Linear(f_v)).
    Audio: the gate layer; video: the video projection (weights and biases, as the paper's `fc_mod0_x`,
    `fc_mod1_y`); shared: the output layer."""

    inputs = "features"

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int | None = None):
        super().__init__()
        hidden = _positive_int("hidden", dims["video"] if hidden is None else hidden)
        self.gate = nn.Linear(dims["audio"], hidden)
        self.project = nn.Linear(dims["video"], hidden)
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.out(torch.sigmoid(self.gate(feats["audio"])) * self.project(feats["video"]))

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return list({"audio": self.gate, "video": self.project}[modality].parameters())

    def shared_params(self) -> list[nn.Parameter]:
        return list(self.out.parameters())


class MidFusion(nn.Module):
    """h = W_a f_a + W_v f_v + b (to `hidden`) -> ReLU -> Dropout -> Linear -> ReLU -> Dropout -> Linear(C)
    (the paper's "nonlinear" head, hidden 64). Modality m: W_m. Shared: b and the MLP."""

    inputs = "features"

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        hidden, dropout = _positive_int("hidden", hidden), _dropout(dropout)
        self.weights = nn.ModuleDict({m: nn.Linear(d, hidden, bias=False) for m, d in dims.items()})
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.mlp = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(sum(self.weights[m](f) for m, f in feats.items()) + self.bias)

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return list(self.weights[modality].parameters())

    def shared_params(self) -> list[nn.Parameter]:
        return [self.bias, *self.mlp.parameters()]


class TransformerFusion(nn.Module):
    """Tokens of every modality (the encoders' non-pooled maps) -> Linear to `dim` + a learned modality
    embedding -> [CLS] + all tokens -> pre-norm transformer encoder (padding masked) -> Linear on CLS.

    Modality m: its token projection (the analogue of W_m; the paper has none since both maps are 512-d).
    Shared: CLS, modality embeddings, transformer and output layer (the paper scales none of them).
    Defaults follow the paper's size (512-d, 2 layers); its fusion blocks are Conformers, ours plain
    transformer layers, since a time convolution across the concatenated modalities has no meaning."""

    inputs = "tokens"

    def __init__(self, dims: dict[str, int], num_classes: int, dim: int = 512, depth: int = 2, heads: int = 8,
                 ff_mult: int = 4, dropout: float = 0.1):
        super().__init__()
        dim, depth, heads, ff_mult = (_positive_int(k, v) for k, v in
                                      (("dim", dim), ("depth", depth), ("heads", heads), ("ff_mult", ff_mult)))
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.order = list(dims)
        self.project = nn.ModuleDict({m: nn.Linear(d, dim) for m, d in dims.items()})
        self.modality_embedding = nn.Parameter(torch.randn(len(dims), dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, ff_mult * dim, _dropout(dropout), activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(dim), enable_nested_tensor=False)
        self.out = nn.Linear(dim, num_classes)

    def forward(self, tokens: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        first = tokens[self.order[0]][0]
        b = first.shape[0]
        seq = [self.cls.expand(b, 1, -1)]
        masks = [torch.ones(b, 1, dtype=torch.bool, device=first.device)]
        for i, m in enumerate(self.order):
            x, mask = tokens[m]
            seq.append(self.project[m](x) + self.modality_embedding[i])
            masks.append(torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mask is None else mask)
        pad = None if all(tokens[m][1] is None for m in self.order) else ~torch.cat(masks, dim=1)
        return self.out(self.encoder(torch.cat(seq, dim=1), src_key_padding_mask=pad)[:, 0])

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return list(self.project[modality].parameters())

    def shared_params(self) -> list[nn.Parameter]:
        return [self.modality_embedding, self.cls, *self.encoder.parameters(), *self.out.parameters()]


class ProbMeanFusion(nn.Module):
    """The ensemble's prediction: z = log((1/M) sum_m softmax(z_m)) over the encoders' own heads, so
    softmax(z) is the mean of the unimodal probabilities. No parameters (no fused head); chosen by the
    `ensemble` balancing method, and exported like any fusion."""

    inputs = "logits"

    def __init__(self, dims: dict[str, int], num_classes: int):
        super().__init__()

    def forward(self, logits: dict[str, torch.Tensor]) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(z, dim=-1) for z in logits.values()])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))

    def modality_params(self, modality: str) -> list[nn.Parameter]:
        return []

    def shared_params(self) -> list[nn.Parameter]:
        return []


FUSIONS = {"late": LateFusion, "sum": SumFusion, "film": FiLMFusion, "gated": GatedFusion, "mid": MidFusion,
           "transformer": TransformerFusion, "prob-mean": ProbMeanFusion}
