"""`python -m models`: count every registered block with ptflops, as rows for models/catalog.py."""

from __future__ import annotations

from models.complexity import architecture_complexity
from models.registry import ARCHITECTURES

for block in ARCHITECTURES:
    for num_classes in (100, 10):
        counts = architecture_complexity(block, num_classes)
        print(
            f'    ("{block}", {num_classes}): '
            f"Complexity(params={counts.params:_}, macs={counts.macs:_}),"
        )
