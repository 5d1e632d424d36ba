"""The registry of blocks: adding a block is one class here and one row in models/catalog.py."""

from __future__ import annotations

from torch import nn

from models.blocks import MobileBlock, PlainBlock, ResidualBlock
from models.network import Network

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "plain": PlainBlock,
    "residual": ResidualBlock,
    "mobile": MobileBlock,
}


def build_model(block: str, num_classes: int = 100) -> nn.Module:
    """The 18-layer network built from the registered block called ``block``."""
    if block not in ARCHITECTURES:
        valid = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown block {block!r}; valid blocks are: {valid}")
    return Network(ARCHITECTURES[block], num_classes=num_classes)
