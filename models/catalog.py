"""The registered blocks' names and complexity, as a table: no torch needed to read it.

The API validates block names and reports parameters and MACs from this table instead of
building and counting a network inside a request. `tests/test_models.py` checks every entry
against ptflops on the real network; `python -m models` prints the counts to paste here when a
block is added or changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Same order as models.ARCHITECTURES.
BLOCK_NAMES: tuple[str, ...] = ("plain", "residual", "mobile")
BlockName = Literal["plain", "residual", "mobile"]


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int  # multiply-accumulates for one 3x32x32 image

    @property
    def gmacs(self) -> float:
        """MACs in GMac rounded to two places, as ptflops and the course report print them."""
        return round(self.macs / 1e9, 2)

    @property
    def mparams(self) -> float:
        return round(self.params / 1e6, 2)


# (block, num_classes) -> counts measured by ptflops for build_model(block, num_classes).
COMPLEXITY: dict[tuple[str, int], Complexity] = {
    ("plain", 100): Complexity(params=11_050_212, macs=551_979_108),
    ("plain", 10): Complexity(params=11_004_042, macs=551_932_938),
    ("residual", 100): Complexity(params=11_224_932, macs=558_442_596),
    ("residual", 10): Complexity(params=11_178_762, macs=558_396_426),
    ("mobile", 100): Complexity(params=1_326_052, macs=71_919_716),
    ("mobile", 10): Complexity(params=1_279_882, macs=71_873_546),
}


def block_complexity(block: str, num_classes: int = 100) -> Complexity:
    """Parameters and MACs of the registered 18-layer network built from ``block``."""
    try:
        return COMPLEXITY[(block, num_classes)]
    except KeyError:
        raise ValueError(
            f"no complexity recorded for block {block!r} with {num_classes} classes"
        ) from None


@dataclass(frozen=True)
class ReportResult:
    """What the course report published for one block, after 100 epochs on CIFAR-100."""

    params: int | None  # as printed (11.05 M is 11_050_000); None where the report gives none
    macs: int | None
    final_test_accuracy: float  # fraction in [0, 1]
    final_train_loss: float


# The course report's figures (the seed): plain 11.05 M parameters, 0.55 GMac, 70.55 % test
# accuracy, final training loss 0.014; residual 72.56 %, 0.005 (the report prints no parameter or
# MAC count for it); mobile 1.33 M, 0.07 GMac, 61.49 %, 0.100. Experiments with preset "report"
# show these next to each job's own results.
REPORT_RESULTS: dict[str, ReportResult] = {
    "plain": ReportResult(
        params=11_050_000, macs=550_000_000, final_test_accuracy=0.7055, final_train_loss=0.014
    ),
    "residual": ReportResult(
        params=None, macs=None, final_test_accuracy=0.7256, final_train_loss=0.005
    ),
    "mobile": ReportResult(
        params=1_330_000, macs=70_000_000, final_test_accuracy=0.6149, final_train_loss=0.100
    ),
}
