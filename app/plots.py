"""PNG plots of per-epoch metrics, drawn on matplotlib Figures (never pyplot: no global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

METRIC_LABELS = {
    "train_loss": "Training loss",
    "test_loss": "Test loss",
    "train_accuracy": "Training accuracy (%)",
    "test_accuracy": "Test accuracy (%)",
}
PERCENT_METRICS = {"train_accuracy", "test_accuracy"}


@dataclass(frozen=True)
class Series:
    label: str
    epochs: Sequence[int]
    values: Sequence[float]


def line_chart_png(series: Sequence[Series], *, metric: str, title: str) -> bytes:
    """One line per series against the epoch; accuracies shown in percent, like the seed."""
    # Imported here so that an API process loads matplotlib only when it first draws.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    for item in series:
        values = [value * scale for value in item.values]
        axes.plot(
            item.epochs,
            values,
            marker="o" if len(values) < 30 else None,
            markersize=3,
            label=item.label,
        )
    axes.set_xlabel("Epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(METRIC_LABELS[metric])
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if not any(item.values for item in series):
        axes.text(
            0.5,
            0.5,
            "no epochs recorded yet",
            ha="center",
            va="center",
            transform=axes.transAxes,
            color="grey",
        )
    elif len(series) > 1 or series[0].label:
        axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
