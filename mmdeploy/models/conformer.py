"""Conformer encoders, batch-first: (B, T, D) with padded steps masked everywhere.

The reference code fed (T, B, D) into a batch-first Conformer, so attention, the depthwise time
convolution and BatchNorm mixed the samples of a batch. Here every operation stays inside one sample:
attention gets a key padding mask, the depthwise convolution sees padded steps as zeros, the
convolution module normalises with LayerNorm, and pooling is a masked mean over time. A sample's output
therefore depends neither on the other samples nor on what fills its padding.

Block (Gulati et al. 2020): x + FF/2 -> x + MHSA -> x + Conv -> x + FF/2 -> LayerNorm. Positions are
absolute sinusoids added after the input projection (the reference uses relative positions).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmdeploy.models.tokens import TokenEncoder, time_mask


def sinusoids(steps: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[steps, dim] fixed sine/cosine position table."""
    pos = torch.arange(steps, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(steps, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table.to(dtype)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, mult: int, dropout: float):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, mult * dim), nn.SiLU(), nn.Dropout(dropout),
                         nn.Linear(mult * dim, dim), nn.Dropout(dropout))


class ConvModule(nn.Module):
    """LN -> pointwise (2D) + GLU -> depthwise conv over time -> LN -> SiLU -> pointwise -> dropout."""

    def __init__(self, dim: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_in = nn.Linear(dim, 2 * dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.depthwise_norm = nn.LayerNorm(dim)
        self.pointwise_out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        if mask is not None:
            y = y * mask.unsqueeze(-1).to(y.dtype)
        y = self.depthwise(y.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(self.depthwise_norm(y))))


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ff_mult: int, kernel: int, dropout: float):
        super().__init__()
        self.ff1 = FeedForward(dim, ff_mult, dropout)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.conv = ConvModule(dim, kernel, dropout)
        self.ff2 = FeedForward(dim, ff_mult, dropout)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        pad = None if mask is None else ~mask
        x = x + self.attn_dropout(self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0])
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x)


class Conformer(nn.Module):
    """[B, T, D] steps + [B, T] mask -> [B, T, D]."""

    def __init__(self, dim: int, depth: int, heads: int, ff_mult: int, kernel: int, dropout: float):
        super().__init__()
        for key, value in (("dim", dim), ("depth", depth), ("heads", heads), ("ff_mult", ff_mult), ("kernel", kernel)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same-length depthwise convolution), got {kernel}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(ConformerBlock(dim, heads, ff_mult, kernel, dropout) for _ in range(depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.dropout(x + sinusoids(x.shape[1], x.shape[2], x.device, x.dtype))
        for block in self.blocks:
            x = block(x, mask)
        return x


class AudioConformer(TokenEncoder):
    """Spectrogram [B, 1, F, T] -> F averaged into `bins` bands -> T frames -> Linear -> Conformer."""

    def __init__(self, dim: int = 512, depth: int = 5, heads: int = 8, ff_mult: int = 4, kernel: int = 31,
                 dropout: float = 0.1, bins: int = 64):
        super().__init__()
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        self.bins = bins
        self.project = nn.Linear(bins, dim)
        self.conformer = Conformer(dim, depth, heads, ff_mult, kernel, dropout)
        self.out_dim = dim

    def tokens(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        steps = x.shape[-1]
        bands = F.adaptive_avg_pool2d(x, (self.bins, steps))[:, 0]        # [B, bins, T]
        mask = time_mask(lengths, steps, steps)
        return self.conformer(self.project(bands.transpose(1, 2)), mask), mask


class VideoConformer(TokenEncoder):
    """Frames [B, 3, N, H, W] -> per-frame conv stem (3 stride-2 convs, spatial mean) -> N steps -> Conformer.

    The stem has no normalisation layer, so nothing mixes frames of different samples."""

    def __init__(self, dim: int = 512, depth: int = 5, heads: int = 8, ff_mult: int = 4, kernel: int = 31,
                 dropout: float = 0.1, stem_width: int = 32):
        super().__init__()
        if not isinstance(stem_width, int) or isinstance(stem_width, bool) or stem_width < 1:
            raise ValueError(f"stem_width must be a positive integer, got {stem_width!r}")
        c = stem_width
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.GELU(), nn.Conv2d(c, 2 * c, 3, 2, 1), nn.GELU(),
                                  nn.Conv2d(2 * c, 4 * c, 3, 2, 1), nn.GELU())
        self.project = nn.Linear(4 * c, dim)
        self.conformer = Conformer(dim, depth, heads, ff_mult, kernel, dropout)
        self.out_dim = dim

    def tokens(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        b, c, n, h, w = x.shape
        frames = self.stem(x.transpose(1, 2).reshape(b * n, c, h, w)).mean(dim=(2, 3)).reshape(b, n, -1)
        mask = time_mask(lengths, n, n)
        return self.conformer(self.project(frames), mask), mask
