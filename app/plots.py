"""PNG plots of per-epoch metrics and of results against network size, drawn on matplotlib
Figures (never pyplot: no global state)."""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib loads on the first drawing, not when the API starts
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

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


def line_chart(
    series: Sequence[Series],
    *,
    metric: str,
    title: str,
    empty_note: str = "no epochs recorded yet",
) -> Figure:
    """One line per series against the epoch; accuracies shown in percent, like the seed. Series
    without epochs are left out (and out of the legend); `empty_note` names them, or says that
    there is nothing to draw."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    drawn = [item for item in series if item.values]
    for item in drawn:
        values = [value * scale for value in item.values]
        axes.plot(
            item.epochs,
            values,
            marker="o" if len(values) < 30 else None,
            markersize=3,
            label=item.label,
        )
    axes.set_xlabel("Epoch")
    # min_n_ticks=1: with one or two epochs MaxNLocator would otherwise fall back to fractions.
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axes.set_ylabel(METRIC_LABELS[metric])
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    if drawn and (len(drawn) > 1 or drawn[0].label):
        axes.legend()
    _note_missing(
        axes,
        anything_drawn=bool(drawn),
        missing=[item.label for item in series if not item.values],
        empty_note=empty_note,
    )
    figure.tight_layout()
    return figure


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float | None  # None: nothing to plot yet


def scatter_chart(
    points: Sequence[Point],
    *,
    x_label: str,
    y_label: str,
    title: str,
    empty_note: str = "no epochs recorded yet",
) -> Figure:
    """One labelled point each against a log x axis (points at the same place share one
    label). Points without a y are left out; `empty_note` names them, or says that there is
    nothing to draw."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    figure = Figure(figsize=(7, 4.5), dpi=100)
    axes = figure.add_subplot()
    drawn = [(point.label, point.x, point.y) for point in points if point.y is not None]
    axes.set_xlabel(x_label)
    axes.set_ylabel(y_label)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if drawn:
        axes.set_xscale("log")
        # Plain numbers (2, 5, 10) rather than powers of ten: sizes span one or two decades.
        axes.xaxis.set_major_formatter(LogFormatter())
        axes.xaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))
        axes.scatter([x for _, x, _ in drawn], [y for _, _, y in drawn], zorder=3)
        labels: dict[tuple[float, float], list[str]] = {}
        for label, x, y in drawn:
            labels.setdefault((x, y), []).append(label)
        axes.margins(x=0.1, y=0.15)
        low, high = (math.log(limit) for limit in axes.get_xlim())
        for (x, y), names in labels.items():
            # Labels in the right half go left of their point, so that none runs off the chart.
            right_half = math.log(x) > (low + high) / 2
            axes.annotate(
                ", ".join(names),
                (x, y),
                textcoords="offset points",
                xytext=(-5, 5) if right_half else (5, 5),
                ha="right" if right_half else "left",
                fontsize="small",
            )
    _note_missing(
        axes,
        anything_drawn=bool(drawn),
        missing=[point.label for point in points if point.y is None],
        empty_note=empty_note,
    )
    figure.tight_layout()
    return figure


def _note_missing(
    axes: Axes, *, anything_drawn: bool, missing: Sequence[str], empty_note: str
) -> None:
    """With nothing drawn, `empty_note` in the middle; otherwise the names left out, in the
    corner."""
    if not anything_drawn:
        axes.set_xlim(0, 1)
        axes.text(
            0.5, 0.5, empty_note, ha="center", va="center", transform=axes.transAxes, color="grey"
        )
    elif missing:
        axes.text(
            0.99,
            0.01,
            f"{empty_note}: {', '.join(missing)}",
            ha="right",
            va="bottom",
            transform=axes.transAxes,
            color="grey",
            fontsize="small",
        )


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# Drawing takes hundreds of milliseconds of CPU, while a polled plot changes only when an epoch
# lands: the same data is drawn once per process and answered from memory after that.
PLOT_CACHE_SIZE = 256


def line_chart_png(
    series: Sequence[Series],
    *,
    metric: str,
    title: str,
    empty_note: str = "no epochs recorded yet",
) -> bytes:
    """`line_chart` as PNG bytes, drawn once per distinct input."""
    frozen = tuple(Series(item.label, tuple(item.epochs), tuple(item.values)) for item in series)
    return _cached_line_chart_png(frozen, metric, title, empty_note)


@functools.lru_cache(maxsize=PLOT_CACHE_SIZE)
def _cached_line_chart_png(
    series: tuple[Series, ...], metric: str, title: str, empty_note: str
) -> bytes:
    return png_bytes(line_chart(series, metric=metric, title=title, empty_note=empty_note))
