"""The BiT-flavoured ResNet of the paper's hybrids: weight-standardised convolutions, GroupNorm,
TF "SAME" padding, bottleneck units with the stride on the 3x3 convolution.

Numerics follow the official Flax model: kernels standardised as (w - mean) / (std + 1e-5) at
use time, GroupNorm with 32 groups and epsilon 1e-6, and asymmetric SAME padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output ceil(size / stride); the extra pixel of odd padding goes after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class StdConv2d(nn.Conv2d):
    """Convolution whose kernel is standardised per output channel each time it is used."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int, stride: int = 1, eps: float = 1e-5):
        super().__init__(in_chans, out_chans, kernel, stride=stride, padding=0, bias=False)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        std = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True).sqrt()
        return (w - mean) / (std + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = same_padding(x.shape[-2], k, s)
        left, right = same_padding(x.shape[-1], k, s)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.standardized_weight(), None, self.stride)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class Bottleneck(nn.Module):
    """conv1 1x1 -> GN -> ReLU -> conv2 3x3 (stride) -> GN -> ReLU -> conv3 1x1 -> GN, plus the
    (projected) input, then ReLU."""

    def __init__(self, in_chans: int, features: int, stride: int):
        super().__init__()
        out = features * 4
        self.needs_projection = in_chans != out or stride != 1
        if self.needs_projection:
            self.conv_proj = StdConv2d(in_chans, out, 1, stride)
            self.gn_proj = group_norm(out)
        self.conv1 = StdConv2d(in_chans, features, 1)
        self.gn1 = group_norm(features)
        self.conv2 = StdConv2d(features, features, 3, stride)
        self.gn2 = group_norm(features)
        self.conv3 = StdConv2d(features, out, 1)
        self.gn3 = group_norm(out)
        nn.init.zeros_(self.gn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.conv_proj(x)) if self.needs_projection else x
        y = F.relu(self.gn1(self.conv1(x)))
        y = F.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return F.relu(residual + y)


class ResNetStem(nn.Module):
    """Root (7x7/2 conv, GN, ReLU, 3x3/2 max-pool) and bottleneck stages; stride 4 * 2^(stages-1)."""

    def __init__(self, in_chans: int, layers: tuple[int, ...], width: int = 64):
        super().__init__()
        self.conv_root = StdConv2d(in_chans, width, 7, 2)
        self.gn_root = group_norm(width)
        stages = []
        chans = width
        for i, units in enumerate(layers):
            features = width * 2**i
            blocks = [Bottleneck(chans if u == 0 else features * 4, features,
                                 (1 if i == 0 else 2) if u == 0 else 1) for u in range(units)]
            stages.append(nn.Sequential(*blocks))
            chans = features * 4
        self.stages = nn.ModuleList(stages)
        self.out_chans = chans
        for m in self.modules():
            if isinstance(m, StdConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.gn_root(self.conv_root(x)))
        top, bottom = same_padding(x.shape[-2], 3, 2)
        left, right = same_padding(x.shape[-1], 3, 2)
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
        x = F.max_pool2d(x, 3, 2)
        for stage in self.stages:
            x = stage(x)
        return x

