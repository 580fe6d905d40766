"""The project's own model: a small CNN with ResNet's stem (a BatchNorm followed by an in-place ReLU)."""

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        x = self.block(x)
        return self.head(x)


def build() -> nn.Module:
    """The factory ``[tool.conformance]`` names as ``tinynet.py:build``."""
    return TinyNet()
