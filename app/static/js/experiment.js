// The experiment page: the summary (GET /experiments/{id}) a page of jobs at a time, the curves
// of the page's jobs overlaid and growing from GET /experiments/{id}/events (or, on a server
// without it, from polling the page's curves in one request), the accuracy-vs-MACs chart, and
// for the "report" preset the report's published figures beside the measured ones.

import {
  POLL_MILLISECONDS, api, debounced, decimal, describeError, el, followEvents, gmacs,
  guardWrites, millions, percent, postButton, setLiveMode, setStatus,
} from "./common.js";
import {
  BLOCK_COLOURS, colour, epochChart, logScatter, METRICS, padLogAxis, plotted, pointCount, setSeries,
} from "./charts.js";

const root = document.getElementById("experiment");
const experimentId = Number(root.dataset.experimentId);
const isReport = root.dataset.preset === "report";
const problem = document.getElementById("experiment-problem");

// The jobs a page of the summary shows (and its charts draw): what an experiment of any size
// costs one request.
const PAGE_ROWS = 100;
// Points per curve when polling: a page of curves stays well under the API's 1 MB.
const POLLED_POINTS = 100;

let experiment = null;
let sort = { column: "job_id", order: "asc" };
let pages = [null]; // the cursor of each page read so far; the last is the one shown
const curves = new Map(); // job id -> Map(epoch -> metric row)

// Each curve chart shows one metric for the jobs of its section's blocks (all jobs outside one).
const curveCharts = [...root.querySelectorAll("canvas.curve-chart")].map((canvas) => {
  const section = canvas.closest("[data-blocks]");
  return {
    chart: epochChart(canvas, METRICS[canvas.dataset.metric].label, METRICS[canvas.dataset.metric].percent),
    metric: canvas.dataset.metric,
    blocks: section ? new Set(section.dataset.blocks.split(" ")) : null,
  };
});
const scatter = logScatter(document.getElementById("accuracy-vs-macs"), "MACs per image", "best test accuracy (%)", gmacs);

function showProblem(text) {
  problem.hidden = !text;
  problem.textContent = text || "";
}

/** A hyperparameter as a person writes it: 0.030000000000000002 is 0.03. */
function compact(value) {
  return typeof value === "number" && !Number.isInteger(value) ? String(Number(value.toPrecision(4))) : String(value);
}

/** "plain lr 0.1 seed 1": the block and the values that vary between the jobs. */
function jobLabel(job) {
  const varied = Object.entries(job.varied || {})
    .filter(([name]) => name !== "block" && name !== "seed")
    .map(([name, value]) => `${name} ${compact(value)}`);
  const seed = (experiment.varying || []).includes("seed") ? [`seed ${job.seed}`] : [];
  return [job.block, ...varied, ...seed, `(job ${job.job_id})`].join(" ");
}

function jobColour(job, index) {
  const sameBlock = experiment.jobs.filter((other) => other.block === job.block).length;
  return sameBlock === 1 && BLOCK_COLOURS[job.block] ? BLOCK_COLOURS[job.block] : colour(index);
}

function drawCurves() {
  if (!experiment) return;
  for (const { chart, metric, blocks } of curveCharts) {
    experiment.jobs.forEach((job, index) => {
      if (blocks && !blocks.has(job.block)) return;
      const rows = [...(curves.get(job.job_id) || new Map()).values()].sort((a, b) => a.epoch - b.epoch);
      const points = rows.map((row) => ({ x: row.epoch, y: plotted(metric, row[metric]) }));
      setSeries(chart, job.job_id, jobLabel(job), points, jobColour(job, index));
    });
    chart.update("none");
    chart.canvas.dataset.points = String(pointCount(chart));
  }
}
const scheduleCurves = debounced(drawCurves, 100);

function addEpoch(row) {
  if (!curves.has(row.job_id)) curves.set(row.job_id, new Map());
  curves.get(row.job_id).set(row.epoch, row);
  scheduleCurves();
}

function drawScatter() {
  const byBlock = new Map();
  for (const job of experiment.jobs) {
    if (job.best_test_accuracy == null) continue;
    if (!byBlock.has(job.block)) byBlock.set(job.block, []);
    byBlock.get(job.block).push({ x: job.macs, y: job.best_test_accuracy * 100, label: `${jobLabel(job)}: ${percent(job.best_test_accuracy)}, ${gmacs(job.macs)}` });
  }
  const datasets = [...byBlock].map(([block, points], index) => ({
    label: block, data: points, backgroundColor: BLOCK_COLOURS[block] || colour(index), borderColor: BLOCK_COLOURS[block] || colour(index), pointRadius: 5,
  }));
  const published = new Map();
  for (const job of experiment.jobs) {
    const report = job.report;
    if (report && report.macs != null && report.final_test_accuracy != null && !published.has(job.block)) {
      published.set(job.block, { x: report.macs, y: report.final_test_accuracy * 100, label: `report, ${job.block}: ${percent(report.final_test_accuracy)}, ${gmacs(report.macs)}` });
    }
  }
  if (published.size) {
    datasets.push({ label: "report (published)", data: [...published.values()], pointStyle: "circle", pointRadius: 7, borderColor: "#333", backgroundColor: "rgba(0,0,0,0)", borderWidth: 2 });
  }
  scatter.data.datasets = datasets;
  padLogAxis(scatter);
  scatter.update("none");
  scatter.canvas.dataset.points = String(pointCount(scatter));
}

const SUMMARY_COLUMNS = [
  ["job_id", "Job", (job) => el("a", { href: `/ui/jobs/${Number(job.job_id)}` }, `#${job.job_id}`)],
  ["block", "Block", (job) => job.block],
  ["status", "Status", (job) => el("span", { class: `status status-${job.status}` }, job.status)],
  [null, "Epochs", (job) => `${job.epochs_done}/${job.epochs_total}`],
  ["params", "Params", (job) => millions(job.params)],
  ["macs", "MACs", (job) => gmacs(job.macs)],
  ["best_test_accuracy", "Best test acc.", (job) => percent(job.best_test_accuracy)],
  ["final_test_accuracy", "Final test acc.", (job) => percent(job.final_test_accuracy)],
  ["final_train_loss", "Final train loss", (job) => decimal(job.final_train_loss)],
  ["seconds_per_epoch", "s/epoch", (job) => decimal(job.seconds_per_epoch, 1)],
];

function summaryColumns() {
  // The hyperparameters that vary between the jobs (besides the block) get a column each.
  const varying = (experiment.varying || []).filter((name) => name !== "block" && name !== "seed");
  const extra = varying.map((name) => [null, name, (job) => compact((job.varied || {})[name] ?? "")]);
  const seed = [[null, "Seed", (job) => job.seed]];
  // A search's trials: their number and the rung each reached, after the status.
  const trial = experiment.search ? [[null, "Trial", (job) => (job.trial == null ? "" : String(job.trial))], [null, "Rung", (job) => (job.rung == null ? "" : String(job.rung))]] : [];
  return [...SUMMARY_COLUMNS.slice(0, 2), ...extra, ...seed, ...SUMMARY_COLUMNS.slice(2, 3), ...trial, ...SUMMARY_COLUMNS.slice(3)];
}

function drawSummary() {
  const table = document.getElementById("summary");
  const columns = summaryColumns();
  const headings = columns.map(([column, title]) => {
    if (!column) return el("th", {}, title);
    const current = sort.column === column;
    const button = el("button", { type: "button", class: "link", dataset: { sort: column } }, title + (current ? (sort.order === "asc" ? " ▲" : " ▼") : ""));
    button.addEventListener("click", () => {
      sort = { column, order: current && sort.order === "asc" ? "desc" : "asc" };
      pages = [null];
      load();
    });
    return el("th", { "aria-sort": current ? (sort.order === "asc" ? "ascending" : "descending") : null }, button);
  });
  table.tHead.replaceChildren(el("tr", {}, headings));
  const rows = experiment.jobs.map((job) => el("tr", { dataset: { jobId: job.job_id, status: job.status } }, columns.map(([, , cell]) => el("td", {}, cell(job)))));
  table.tBodies[0].replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: columns.length }, "No jobs."))]));
  drawPager();
}

/** Which jobs the page shows, and the buttons to the pages around it. */
function drawPager() {
  const first = (pages.length - 1) * PAGE_ROWS + 1;
  const shown = experiment.jobs.length;
  document.getElementById("page-facts").textContent = shown && experiment.job_count > shown
    ? `jobs ${first}–${first + shown - 1} of ${experiment.job_count} (the charts show these)`
    : "";
  document.getElementById("previous-page").hidden = pages.length === 1;
  document.getElementById("next-page").hidden = !experiment.jobs_next;
}

function cursorOf(url) {
  return new URL(url, window.location.origin).searchParams.get("cursor");
}

document.getElementById("next-page").addEventListener("click", () => {
  if (!experiment || !experiment.jobs_next) return;
  pages.push(cursorOf(experiment.jobs_next));
  load();
});
document.getElementById("previous-page").addEventListener("click", () => {
  if (pages.length > 1) pages.pop();
  load();
});

/** The query of the page shown: its sort, its size and where it starts. */
function pageQuery() {
  const cursor = pages[pages.length - 1];
  return `sort=${encodeURIComponent(sort.column)}&order=${sort.order}&limit=${PAGE_ROWS}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
}

const NOT_PUBLISHED = "not published";
const published = (value, format) => (value == null ? el("span", { class: "muted" }, NOT_PUBLISHED) : format(value));

function drawReport() {
  for (const section of root.querySelectorAll(".problem-section")) {
    const blocks = section.dataset.blocks.split(" ");
    const jobs = experiment.jobs
      .filter((job) => blocks.includes(job.block))
      .sort((a, b) => blocks.indexOf(a.block) - blocks.indexOf(b.block) || a.job_id - b.job_id);
    const rows = jobs.map((job) => {
      const report = job.report || {};
      return el(
        "tr",
        { dataset: { jobId: job.job_id, block: job.block } },
        el("th", { scope: "row" }, job.block),
        el("td", {}, el("a", { href: `/ui/jobs/${Number(job.job_id)}` }, `#${job.job_id}`)),
        el("td", {}, el("span", { class: `status status-${job.status}` }, job.status)),
        el("td", {}, `${job.epochs_done}/${job.epochs_total}`),
        el("td", { class: "measured" }, millions(job.params)),
        el("td", { class: "report" }, published(report.params, millions)),
        el("td", { class: "measured" }, gmacs(job.macs)),
        el("td", { class: "report" }, published(report.macs, gmacs)),
        el("td", { class: "measured" }, percent(job.final_test_accuracy)),
        el("td", { class: "report" }, published(report.final_test_accuracy, percent)),
        el("td", { class: "measured" }, decimal(job.final_train_loss)),
        el("td", { class: "report" }, published(report.final_train_loss, (value) => decimal(value, 3))),
      );
    });
    section.querySelector("tbody").replaceChildren(...rows);
  }
}

const searchCharts = { best: null, params: null };

/** A trial's objective value for the charts: its last recorded value of the objective metric. */
function objectiveOf(job, metric) {
  const rows = [...(curves.get(job.job_id) || new Map()).values()].sort((a, b) => a.epoch - b.epoch);
  if (rows.length) return rows[rows.length - 1][metric];
  if (metric === "test_accuracy") return job.final_test_accuracy;
  if (metric === "train_loss") return job.final_train_loss;
  return null;
}

/** An objective value as the tables show its metric: accuracies in percent. */
function objectiveText(value, metric) {
  return metric.endsWith("accuracy") ? percent(value) : decimal(value);
}

/** A noise margin: percentage points for an accuracy. */
function marginText(value, metric) {
  if (value == null) return decimal(null);
  return metric.endsWith("accuracy") ? `±${(value * 100).toFixed(2)} pp` : `±${decimal(value)}`;
}

function drawSettings(search, spec) {
  const settings = search.settings || {};
  const pruner = settings.pruner || spec.pruner;
  const sampler = [settings.sampler || spec.sampler, `seed ${settings.seed ?? spec.seed}`];
  if (settings.startup_trials != null) sampler.push(`${settings.startup_trials} random start-up trials`);
  const prunerParts = [pruner.type];
  if (pruner.type !== "none") prunerParts.push(`from epoch ${pruner.min_epochs}`);
  if (pruner.type === "hyperband" || pruner.type === "asha") prunerParts.push(`1 in ${pruner.reduction_factor} goes on at a rung`);
  if (pruner.type === "median") prunerParts.push(`after ${pruner.startup_trials} ended trials`);
  const rows = [
    ["Sampler", sampler.join(", ")],
    ["Pruner", prunerParts.join(", ")],
    ["Objective", `${spec.objective.metric} (${spec.objective.mode})`],
    ["Trials", `${settings.max_trials ?? spec.max_trials} in all, ${settings.max_concurrent ?? spec.max_concurrent} at once`],
  ];
  if (settings.brackets) rows.push(["Brackets", settings.brackets.map((b, index) => `${index}: ${b.trials} trials from epoch ${b.first_rung_epochs}`).join("; ")]);
  if (settings.rungs_epochs) rows.push(["Rungs at epochs", settings.rungs_epochs.join(", ")]);
  document.getElementById("search-settings").replaceChildren(...rows.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

function drawSearch() {
  const section = document.getElementById("search");
  const search = experiment.search;
  section.hidden = !search;
  if (!search || !window.Chart) return;
  const spec = experiment.spec.search;
  const objective = spec.objective;
  const accuracy = objective.metric.endsWith("accuracy");
  const scaled = (value) => (value == null ? null : accuracy ? value * 100 : value);
  const best = search.best;
  const bestParams = best ? Object.entries(best.params).map(([name, value]) => `${name} ${compact(value)}`).join(", ") : "";
  document.getElementById("search-facts").replaceChildren(
    el("span", {}, `${search.trials_created}/${search.max_trials} trials`),
    el("span", {}, `${search.epochs_spent}/${search.epochs_full} epochs trained`),
    ...(search.paused ? [el("span", {}, `${search.paused} waiting at a rung`)] : []),
    el("span", {}, `objective: ${objective.metric} (${objective.mode})`),
    el("span", { id: "search-best" }, best ? `best: ${objectiveText(best.value, objective.metric)} (trial ${best.trial}, job ${best.job_id}: ${bestParams})` : "best: none yet"),
  );
  const warnings = document.getElementById("search-warnings");
  warnings.hidden = !(search.warnings || []).length;
  warnings.replaceChildren(...(search.warnings || []).map((warning) => el("li", { dataset: { code: warning.code } }, warning.message)));
  drawSettings(search, spec);
  // Best so far, in trial order, over the trials that trained every epoch.
  const trials = experiment.jobs.filter((job) => job.trial != null).sort((a, b) => a.trial - b.trial);
  let running = null;
  const bestPoints = [];
  for (const job of trials) {
    if (job.status !== "succeeded") continue;
    const value = objectiveOf(job, objective.metric);
    if (value == null) continue;
    if (running == null || (objective.mode === "max" ? value > running : value < running)) running = value;
    bestPoints.push({ x: job.trial, y: scaled(running) });
  }
  if (!searchCharts.best) searchCharts.best = epochChart(document.getElementById("best-so-far"), objective.metric, accuracy);
  searchCharts.best.options.scales.x.title.text = "trial";
  searchCharts.best.options.scales.x.min = 0;
  setSeries(searchCharts.best, "best", "best so far", bestPoints, colour(0));
  searchCharts.best.update("none");
  searchCharts.best.canvas.dataset.points = String(pointCount(searchCharts.best));

  const select = document.getElementById("search-param");
  const names = Object.keys(spec.space);
  if (select.options.length !== names.length) {
    select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
    select.addEventListener("change", drawSearch);
  }
  const name = select.value || names[0];
  // A choice is drawn on a category axis (its values in order), whatever their type; a range
  // on a linear axis, or a logarithmic one when it was searched on a log scale.
  const dimension = spec.space[name] || {};
  const choices = dimension.choice ? [...dimension.choice].sort((a, b) => (typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b)))).map(compact) : null;
  if (!searchCharts.params) {
    searchCharts.params = new window.Chart(document.getElementById("params-vs-objective"), {
      type: "scatter",
      data: { datasets: [] },
      options: { animation: false, responsive: true, maintainAspectRatio: false, plugins: { legend: { position: "bottom" }, tooltip: { callbacks: { label: (item) => item.raw.label } } }, scales: { x: { title: { display: true } }, y: { title: { display: true } } } },
    });
  }
  const chart = searchCharts.params;
  chart.options.scales.x = choices
    ? { type: "category", labels: choices, offset: true, title: { display: true, text: name } }
    : { type: dimension.loguniform ? "logarithmic" : "linear", title: { display: true, text: name } };
  chart.options.scales.y = { title: { display: true, text: accuracy ? `${objective.metric} (%)` : objective.metric } };
  const point = (job) => {
    const value = (job.varied || {})[name];
    return { x: choices ? compact(value) : value, y: scaled(objectiveOf(job, objective.metric)), label: `trial ${job.trial}, job ${job.job_id} (${job.status}): ${name} ${compact(value)}` };
  };
  const ended = trials.filter((job) => job.status === "succeeded" && objectiveOf(job, objective.metric) != null);
  const pruned = trials.filter((job) => job.status === "pruned" && objectiveOf(job, objective.metric) != null);
  chart.data.datasets = [
    { label: "trained every epoch", data: ended.map(point), backgroundColor: colour(0), borderColor: colour(0), pointRadius: 5 },
    { label: "pruned", data: pruned.map(point), backgroundColor: "rgba(0,0,0,0)", borderColor: colour(1), borderWidth: 2, pointRadius: 5 },
  ];
  chart.update("none");
  chart.canvas.dataset.points = String(pointCount(chart));

  const rungIndex = new Map();
  const rows = search.rungs.map((rung) => {
    const key = rung.bracket ?? "";
    const index = rungIndex.get(key) ?? 0;
    rungIndex.set(key, index + 1);
    return el("tr", { dataset: { rung: index, bracket: key } },
      el("td", {}, rung.bracket == null ? decimal(null) : String(rung.bracket)), el("td", {}, String(index)),
      el("td", {}, String(rung.epochs)), el("td", {}, String(rung.reached)), el("td", {}, String(rung.promoted)),
      el("td", {}, String(rung.stopped)), el("td", {}, String(rung.waiting)),
      el("td", {}, objectiveText(rung.cutoff, objective.metric)), el("td", {}, marginText(rung.margin, objective.metric)));
  });
  if (rows.length) document.getElementById("rungs").tBodies[0].replaceChildren(...rows);
}

function draw() {
  setStatus(document.getElementById("experiment-status"), experiment.status);
  const counts = Object.entries(experiment.status_counts || {}).filter(([, count]) => count > 0);
  document.getElementById("experiment-counts").textContent =
    `${experiment.job_count} job${experiment.job_count === 1 ? "" : "s"}` + (counts.length ? `: ${counts.map(([name, count]) => `${count} ${name}`).join(", ")}` : "");
  document.getElementById("cancel-experiment").hidden = experiment.ended;
  drawSummary();
  if (isReport) drawReport();
  drawScatter();
  drawCurves();
  drawSearch();
}

async function load() {
  try {
    experiment = await api(`/experiments/${experimentId}?${pageQuery()}`);
    showProblem(null);
    draw();
  } catch (error) {
    showProblem(error.status === 404 ? "This server does not answer GET /experiments/{id}: it has no experiments API." : describeError(error));
  }
  return experiment;
}
const scheduleLoad = debounced(load, 1000);

/** A status event: the row changes now; the experiment's own figures come with the next load. */
function updateJob(state) {
  const job = experiment && experiment.jobs.find((candidate) => candidate.job_id === state.job_id);
  if (job) {
    Object.assign(job, {
      status: state.status, epochs_done: state.epochs_done, epochs_total: state.epochs_total,
      best_test_accuracy: state.best_test_accuracy, final_test_accuracy: state.final_test_accuracy, final_train_loss: state.final_train_loss,
    });
    drawSummary();
    if (isReport) drawReport();
  }
  scheduleLoad();
}

/** The curves of the page's jobs, as columns: one request (a few if the page's curves are
 * over the API's byte cap), whatever the number of jobs. */
async function loadCurves(current) {
  const wanted = new Set(current.jobs.filter((job) => job.epochs_done > 0).map((job) => job.job_id));
  let url = `/experiments/${experimentId}/metrics?format=columns&max_points=${POLLED_POINTS}&${pageQuery()}`;
  while (url && wanted.size) {
    const answer = await api(url);
    for (const curve of answer.jobs) {
      wanted.delete(curve.job_id);
      const rows = new Map();
      curve.epoch.forEach((epoch, index) => {
        const row = { job_id: curve.job_id, epoch };
        for (const name of Object.keys(curve)) if (name !== "job_id" && name !== "epoch") row[name] = curve[name][index];
        rows.set(epoch, row);
      });
      curves.set(curve.job_id, rows);
    }
    url = answer.jobs.length ? answer.next : null;
  }
  scheduleCurves();
}

let polledEpochs = null;

/** For servers without the event stream: the page of the experiment, and its curves when its
 * jobs recorded epochs, every 2 s. */
async function poll() {
  const current = await load();
  if (current) {
    const epochs = current.jobs.map((job) => `${job.job_id}:${job.epochs_done}`).join(",");
    if (epochs !== polledEpochs) {
      try {
        await loadCurves(current);
        polledEpochs = epochs;
      } catch (error) {
        showProblem(describeError(error));
      }
    }
    if (current.ended) {
      setLiveMode("ended");
      return;
    }
  }
  setTimeout(poll, POLL_MILLISECONDS);
}

guardWrites(document.getElementById("experiment").dataset.owner, [[document.getElementById("cancel-experiment"), "cancel"]]);
postButton(document.getElementById("cancel-experiment"), `/experiments/${experimentId}/cancel`, (answer) => {
  experiment = answer;
  draw();
  return "Cancel requested for every job that had not ended.";
});

// The curves so far come from the page's metrics (bounded, whatever the number of jobs and
// epochs); the event stream then sends only what happens after the experiment was read.
const first = await load();
if (!first) {
  setLiveMode("offline");
} else {
  try {
    await loadCurves(first);
  } catch (error) {
    showProblem(describeError(error));
  }
  if (first.ended) {
    setLiveMode("ended");
  } else {
    const since = new URLSearchParams({ last_event_id: first.last_event_id || "" });
    followEvents(`/experiments/${experimentId}/events?${since}`, {
      // trial_created, trial_pruned and best_changed: the search's figures come with the next load.
      onEvent: (kind, data) => (kind === "epoch" ? addEpoch(data) : kind === "status" ? updateJob(data) : scheduleLoad()),
      onEnd: () => load(),
      onUnavailable: () => {
        setLiveMode("polling");
        poll();
      },
    });
  }
}
