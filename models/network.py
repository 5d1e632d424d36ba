"""The 18-layer CIFAR network: a stem, four stages of two blocks, pooling and a classifier."""

from __future__ import annotations

from torch import Tensor, nn

STAGE_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2


class Network(nn.Module):
    """stem conv (1) + 4 stages x 2 blocks x 2 convs (16) + linear (1) = 18 weight layers."""

    def __init__(self, block: type[nn.Module], num_classes: int = 100) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, STAGE_WIDTHS[0], kernel_size=3, padding=1),
            nn.BatchNorm2d(STAGE_WIDTHS[0]),
            nn.ReLU(inplace=True),
        )
        self.in_channels = STAGE_WIDTHS[0]
        self.stage1 = self._make_stage(block, STAGE_WIDTHS[0], stride=1)
        self.stage2 = self._make_stage(block, STAGE_WIDTHS[1], stride=2)
        self.stage3 = self._make_stage(block, STAGE_WIDTHS[2], stride=2)
        self.stage4 = self._make_stage(block, STAGE_WIDTHS[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(STAGE_WIDTHS[3], num_classes)

    def _make_stage(self, block: type[nn.Module], out_channels: int, stride: int) -> nn.Sequential:
        layers = [block(self.in_channels, out_channels, stride)]
        layers += [block(out_channels, out_channels, 1) for _ in range(BLOCKS_PER_STAGE - 1)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        logits: Tensor = self.fc(self.pool(x).flatten(1))
        return logits
