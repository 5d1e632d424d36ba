// Line and scatter charts on the vendored Chart.js (loaded before this module as window.Chart).
// Series are keyed so that a point that arrives again (a replayed event) replaces, never doubles.

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
export const BLOCK_COLOURS = { plain: "#1f77b4", residual: "#d62728", mobile: "#2ca02c" };

export function colour(index) {
  return COLOURS[index % COLOURS.length];
}

export const METRICS = {
  train_loss: { label: "training loss", percent: false },
  test_loss: { label: "test loss", percent: false },
  train_accuracy: { label: "training accuracy (%)", percent: true },
  test_accuracy: { label: "test accuracy (%)", percent: true },
};

/** A metric's value as plotted: accuracies in percent. */
export function plotted(metric, value) {
  return METRICS[metric].percent ? value * 100 : value;
}

/** An empty line chart over epochs; a percent axis starts at 0. */
export function epochChart(canvas, yTitle, percentAxis = false) {
  return new window.Chart(canvas, {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      parsing: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "epoch" }, ticks: { precision: 0 }, min: 1 },
        y: { title: { display: true, text: yTitle }, ...(percentAxis ? { min: 0, suggestedMax: 10 } : {}) },
      },
      plugins: { legend: { position: "bottom" } },
    },
  });
}

/** Set the points of the series `key` (added with `label` and `colour` if new). */
export function setSeries(chart, key, label, points, seriesColour) {
  let dataset = chart.data.datasets.find((candidate) => candidate.key === key);
  if (!dataset) {
    dataset = { key, label, data: [], borderColor: seriesColour, backgroundColor: seriesColour, pointRadius: 2, borderWidth: 2, tension: 0 };
    chart.data.datasets.push(dataset);
  }
  dataset.label = label;
  dataset.data = points;
}

/** Points of every series so far, for tests and for people reading the page with tools. */
export function pointCount(chart) {
  return chart.data.datasets.reduce((total, dataset) => total + dataset.data.length, 0);
}

/** 1, 2 and 5 times a power of ten: the labelled ticks of a log axis (more would overlap). */
function onesTwosFives(value) {
  const mantissa = value / 10 ** Math.floor(Math.log10(value) + 1e-9);
  return [1, 2, 5].some((label) => Math.abs(mantissa - label) < 1e-6);
}

/** A scatter chart with a logarithmic x axis; `xTick` formats its labels. */
export function logScatter(canvas, xTitle, yTitle, xTick) {
  return new window.Chart(canvas, {
    type: "scatter",
    data: { datasets: [] },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      scales: {
        x: { type: "logarithmic", title: { display: true, text: xTitle }, ticks: { callback: (value) => (onesTwosFives(value) ? xTick(value) : "") } },
        y: { title: { display: true, text: yTitle }, suggestedMin: 0 },
      },
      plugins: {
        legend: { position: "bottom" },
        tooltip: { callbacks: { label: (item) => item.raw.label || `${item.raw.x}, ${item.raw.y}` } },
      },
    },
  });
}

/** Room around the points of a log axis, so that none sits on the edge. */
export function padLogAxis(chart, axis = "x") {
  const values = chart.data.datasets.flatMap((dataset) => dataset.data.map((point) => point[axis]));
  if (!values.length) return;
  chart.options.scales[axis].min = Math.min(...values) / 1.6;
  chart.options.scales[axis].max = Math.max(...values) * 1.6;
}
