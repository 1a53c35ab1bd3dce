"""ResNet18-style encoders trained from scratch (torchvision layout, no avgpool/fc), as in the paper.

`width` scales the channel counts (64 = the paper's ResNet18) and `layers` the blocks per stage
([2, 2, 2, 2] = ResNet18), so a CPU recipe can use a narrow, shallow network with the same code.
"""
from __future__ import annotations

import torch
from torch import nn


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


class AudioResNet(nn.Module):
    """Spectrogram [B, 1, F, T] -> ResNet -> global average pool -> [B, D]."""

    def __init__(self, width: int = 64, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.net = ResNet(1, width, tuple(layers))
        self.out_dim = self.net.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))


class VideoResNet(nn.Module):
    """Frames [B, 3, N, H, W] -> per-frame 2D ResNet -> mean over frames and space -> [B, D]."""

    def __init__(self, width: int = 64, layers: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        self.net = ResNet(3, width, tuple(layers))
        self.out_dim = self.net.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, n, h, w = x.shape
        maps = self.net(x.permute(0, 2, 1, 3, 4).reshape(b * n, c, h, w))
        return maps.reshape(b, n, maps.shape[1], -1).mean(dim=(1, 3))
