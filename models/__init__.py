"""The 18-layer CIFAR networks from the course report, by block name.

Importing the package is cheap: torch is loaded only when a network or ptflops is touched
(``models.catalog`` holds the names and counts without it).
"""

from __future__ import annotations

from typing import Any

from models.catalog import BLOCK_NAMES, COMPLEXITY, BlockName, Complexity, block_complexity

_LAZY = {
    "ARCHITECTURES": "models.registry",
    "build_model": "models.registry",
    "Network": "models.network",
    "PlainBlock": "models.blocks",
    "ResidualBlock": "models.blocks",
    "MobileBlock": "models.blocks",
    "architecture_complexity": "models.complexity",
    "count_complexity": "models.complexity",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "BLOCK_NAMES",
    "COMPLEXITY",
    "BlockName",
    "Complexity",
    "MobileBlock",
    "Network",
    "PlainBlock",
    "ResidualBlock",
    "architecture_complexity",
    "block_complexity",
    "build_model",
    "count_complexity",
]
