"""Token maps and their masks: what flows from an encoder to its pooled feature and to token fusions.

An encoder's `tokens(x, lengths)` returns ([B, L, D] tokens, [B, L] bool mask of valid tokens or None),
and its `forward` is the masked mean of those tokens ([B, D]). `lengths` ([B] ints, optional) counts the
valid steps of the input's time axis (spectrogram columns, frames); None means nothing is padded.
"""
from __future__ import annotations

import torch
from torch import nn


def time_mask(lengths: torch.Tensor | None, steps: int, total: int) -> torch.Tensor | None:
    """[B, steps] bool: step j of a time axis downsampled from `total` to `steps` is valid when it starts
    inside the first `lengths` input steps (at least one step stays valid per sample)."""
    if lengths is None:
        return None
    valid = torch.div(lengths.clamp(min=1) * steps + total - 1, total, rounding_mode="floor")
    return torch.arange(steps, device=lengths.device)[None, :] < valid[:, None]


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """[B, L, D] -> [B, D], the mean over valid tokens only."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TokenEncoder(nn.Module):
    """Base of every encoder: subclasses define `tokens` and `out_dim`; forward pools the tokens."""

    out_dim: int

    def tokens(self, x: torch.Tensor, lengths: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(*self.tokens(x, lengths))
