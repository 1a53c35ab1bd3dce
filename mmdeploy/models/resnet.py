"""ResNet18-style encoders trained from scratch (torchvision layout, no avgpool/fc), as in the paper.

`width` scales the channel counts (64 = the paper's ResNet18) and `layers` the blocks per stage
([2, 2, 2, 2] = ResNet18), so a CPU recipe can use a narrow, shallow network with the same code.
"""
from __future__ import annotations

import torch
from torch import nn

from mmdeploy.models.tokens import TokenEncoder, time_mask


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet(nn.Module):
    """conv 7x7/2 -> maxpool 3x3/2 -> 4 stages -> feature map [B, 8*width, h, w]."""

    def __init__(self, in_channels: int, width: int = 64, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if not layers or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in layers):
            raise ValueError(f"layers must be a non-empty list of positive integers, got {list(layers)!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, n in enumerate(layers):
            cout = width * 2 ** i
            blocks = [BasicBlock(cin, cout, 1 if i == 0 else 2)]
            blocks += [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_dim = cin
        self._init()

    def _init(self) -> None:
        # The paper's init: Kaiming-normal convs (fan_out, relu); BN weight ~ N(1, 0.02), bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class AudioResNet(TokenEncoder):
    """Spectrogram [B, 1, F, T] -> ResNet -> map [B, D, h, w] -> h*w tokens; forward = global average pool."""

    def __init__(self, width: int = 64, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.net = ResNet(1, width, tuple(layers))
        self.out_dim = self.net.out_dim

    def tokens(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        maps = self.net(x)
        b, d, h, w = maps.shape
        mask = time_mask(lengths, w, x.shape[-1])
        if mask is not None:
            mask = mask[:, None, :].expand(b, h, w).reshape(b, h * w)
        return maps.flatten(2).transpose(1, 2), mask


class VideoResNet(TokenEncoder):
    """Frames [B, 3, N, H, W] -> per-frame 2D ResNet -> N*h*w tokens; forward = mean over frames and space."""

    def __init__(self, width: int = 64, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.net = ResNet(3, width, tuple(layers))
        self.out_dim = self.net.out_dim

    def tokens(self, x: torch.Tensor, lengths: torch.Tensor | None = None):
        b, c, n, h, w = x.shape
        maps = self.net(x.transpose(1, 2).reshape(b * n, c, h, w))
        d, hw = maps.shape[1], maps.shape[2] * maps.shape[3]
        tokens = maps.reshape(b, n, d, hw).transpose(2, 3).reshape(b, n * hw, d)
        mask = time_mask(lengths, n, n)
        if mask is not None:
            mask = mask[:, :, None].expand(b, n, hw).reshape(b, n * hw)
        return tokens, mask
