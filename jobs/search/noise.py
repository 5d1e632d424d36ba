"""How far apart two evaluations must be before a search may act on the difference.

An objective value is a measurement: test accuracy on n test images is a binomial proportion
with standard error sqrt(p (1 - p) / n); a mean loss has the standard error of a mean, which the
engine records with each epoch (`standard_errors`). A pruner compares a trial's value with a
cutoff (another trial's value, or a median of them), so the difference it sees has the spread of
both: its standard error is sqrt(se_value^2 + se_cutoff^2). A trial is stopped only when it is
worse than the cutoff by more than NOISE_Z of those standard errors, and never by less than one
test image (1 / n) for accuracy: a trial within the margin, or tied, goes on.
docs/design/search-state.md and the README's Searches section state the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Standard errors of the difference a decision must exceed: 2 is about 95 % two-sided.
NOISE_Z = 2.0
ACCURACY_METRICS = frozenset({"test_accuracy", "train_accuracy"})


def accuracy_standard_error(accuracy: float, images: int) -> float:
    """The standard error of an accuracy measured on `images` images."""
    p = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / max(images, 1))


@dataclass(frozen=True)
class Measured:
    """An objective value and its standard error."""

    value: float
    standard_error: float


def measured(
    metric: str, value: float, *, images: int, loss_standard_error: float | None
) -> Measured:
    """The value with its standard error: binomial for an accuracy, the recorded one for a
    loss (0 when none was recorded: an epoch trained before the engine recorded it)."""
    if metric in ACCURACY_METRICS:
        return Measured(value, accuracy_standard_error(value, images))
    return Measured(value, loss_standard_error or 0.0)


def margin(a: Measured, b: Measured, *, metric: str, images: int) -> float:
    """How much worse than `b` the value `a` must be before the difference counts."""
    spread = NOISE_Z * math.sqrt(a.standard_error**2 + b.standard_error**2)
    if metric in ACCURACY_METRICS:
        return max(spread, 1.0 / max(images, 1))
    return spread


def worse_beyond_noise(
    value: Measured, cutoff: Measured, *, maximize: bool, metric: str, images: int
) -> tuple[bool, float]:
    """Whether `value` is worse than `cutoff` by more than the noise margin; and the margin."""
    allowed = margin(value, cutoff, metric=metric, images=images)
    shortfall = (cutoff.value - value.value) if maximize else (value.value - cutoff.value)
    return shortfall > allowed, allowed
