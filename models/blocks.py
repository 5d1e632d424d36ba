"""The three building blocks of the 18-layer network.

Every block maps ``in_channels`` to ``out_channels`` with two 3x3 convolutions (each followed by
batch norm, ReLU between and after) and takes ``stride`` on its first convolution. A new block
is one class with this constructor signature plus one line in ``models.ARCHITECTURES``.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 (bias kept, as in the course notebook)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)


class PlainBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN-ReLU with no shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        activated: Tensor = self.relu(self.bn2(self.conv2(out)))
        return activated


class ResidualBlock(PlainBlock):
    """The plain block plus a shortcut added before the last ReLU (He et al., 2016).

    The shortcut is the identity, or a 1x1 convolution (with ``stride``) and batch norm where
    the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        activated: Tensor = self.relu(out + self.shortcut(x))
        return activated


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN (MobileNet, Howard et al., 2017)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size=3,
                stride=stride,
                padding=1,
                groups=in_channels,
            ),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
        )


class MobileBlock(nn.Module):
    """The plain block with each 3x3 convolution made depthwise-separable; no shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = DepthwiseSeparableConv(in_channels, out_channels, stride)
        self.conv2 = DepthwiseSeparableConv(out_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.conv1(x))
        activated: Tensor = self.relu(self.conv2(out))
        return activated
