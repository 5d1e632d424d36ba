// The job page: curves and the metrics table grow from GET /jobs/{id}/events (or, on a server
// without it, from polling /jobs/{id}/metrics), the header follows the job's status and every
// epoch, and the cancel button posts to /jobs/{id}/cancel.

import {
  POLL_MILLISECONDS, api, debounced, decimal, describeError, el, followEvents, guardWrites,
  percent, postButton, setLiveMode, setStatus,
} from "./common.js";
import { epochChart, plotted, pointCount, setSeries } from "./charts.js";

const initial = JSON.parse(document.getElementById("job-data").textContent);
const jobId = initial.job.id;
const epochs = new Map(); // epoch -> metric row
let ended = initial.job.ended;
let state = initial.job; // the newest status fields known: a JobRead or a status event
let seenSeq = initial.event_seq; // the job's last event that state and the table include
let queueReason = initial.job.queue_reason; // why it is where it is in the queue (GET /jobs/{id})
// No event says that a queued job's place changed (other jobs come and go): it is re-read.
const QUEUE_REFRESH_MILLISECONDS = 5000;

const lossChart = epochChart(document.getElementById("loss-chart"), "loss");
const accuracyChart = epochChart(document.getElementById("accuracy-chart"), "accuracy (%)", true);
const CURVES = [
  [lossChart, "train_loss", "training loss", "#1f77b4"],
  [lossChart, "test_loss", "test loss", "#ff7f0e"],
  [accuracyChart, "train_accuracy", "training accuracy", "#1f77b4"],
  [accuracyChart, "test_accuracy", "test accuracy", "#ff7f0e"],
];

function drawCurves() {
  const rows = [...epochs.values()].sort((a, b) => a.epoch - b.epoch);
  for (const [chart, metric, label, colour] of CURVES) {
    setSeries(chart, metric, label, rows.map((row) => ({ x: row.epoch, y: plotted(metric, row[metric]) })), colour);
  }
  for (const chart of [lossChart, accuracyChart]) {
    chart.update("none");
    chart.canvas.dataset.points = String(pointCount(chart));
  }
}
const scheduleCurves = debounced(drawCurves, 50);

function metricRow(row) {
  return el(
    "tr",
    { dataset: { epoch: row.epoch } },
    el("td", {}, row.epoch),
    el("td", {}, decimal(row.train_loss)),
    el("td", {}, percent(row.train_accuracy)),
    el("td", {}, decimal(row.test_loss)),
    el("td", {}, percent(row.test_accuracy)),
    el("td", {}, decimal(row.learning_rate, 5)),
    el("td", {}, decimal(row.seconds, 1)),
    el("td", {}, decimal(row.images_per_second, 0)),
  );
}

/** Add an epoch (or replace it: a replayed event, or a retried attempt's new figures). */
function addEpoch(row) {
  const known = epochs.has(row.epoch);
  epochs.set(row.epoch, row);
  const body = document.getElementById("metrics-rows");
  const replacement = metricRow(row);
  const existing = body.querySelector(`tr[data-epoch="${Number(row.epoch)}"]`);
  if (existing) existing.replaceWith(replacement);
  else {
    const later = [...body.children].find((tr) => Number(tr.dataset.epoch) > row.epoch);
    body.insertBefore(replacement, later || null);
  }
  scheduleCurves();
  if (!known) scheduleCheckpoints();
  showProgress();
}

/**
 * The progress and figures the metrics table implies, where it is ahead of the last status:
 * a job's epochs_done is its highest recorded epoch, its best test accuracy the highest of
 * them, its final figures those of that epoch. Recorded epochs are never removed, so this
 * only moves forward.
 */
function progressWithEpochs(known) {
  const latest = Math.max(0, ...epochs.keys());
  if (latest <= known.epochs_done) return known;
  const accuracies = [...epochs.values()].map((row) => row.test_accuracy).filter((value) => value != null);
  const best = Math.max(known.best_test_accuracy ?? -Infinity, ...accuracies);
  const last = epochs.get(latest);
  return {
    ...known,
    epochs_done: latest,
    best_test_accuracy: Number.isFinite(best) ? best : null,
    final_test_accuracy: last.test_accuracy,
    final_train_loss: last.train_loss,
  };
}

function showProgress() {
  const shown = progressWithEpochs(state);
  const progress = document.getElementById("job-progress");
  progress.max = shown.epochs_total;
  progress.value = shown.epochs_done;
  document.getElementById("job-epochs").textContent = `${shown.epochs_done}/${shown.epochs_total}`;
  document.getElementById("job-best").textContent = percent(shown.best_test_accuracy);
  document.getElementById("job-final").textContent = percent(shown.final_test_accuracy);
  document.getElementById("job-final-loss").textContent = decimal(shown.final_train_loss);
}

function showQueuePlace() {
  const waiting = state.status === "queued" && Boolean(queueReason);
  document.getElementById("job-queue").hidden = !waiting;
  document.getElementById("job-queue-reason").textContent = waiting ? queueReason : "";
}

/** While the job is queued, its place and the reason for it, every few seconds. */
async function refreshQueuePlace() {
  if (ended) return;
  if (state.status === "queued") {
    try {
      const job = await api(`/jobs/${jobId}`);
      if (job.status === "queued") queueReason = job.queue_reason;
      showQueuePlace();
    } catch {
      // the place shown stays; the next round tries again
    }
  }
  setTimeout(refreshQueuePlace, QUEUE_REFRESH_MILLISECONDS);
}

/** The header from a JobRead or a status event (they share these fields), newer than the last. */
function showState(newer) {
  state = newer;
  ended = state.ended;
  if ("queue_reason" in newer) queueReason = newer.queue_reason;
  setStatus(document.getElementById("job-status"), state.status);
  showQueuePlace();
  showProgress();
  if (state.attempt !== undefined) {
    const attempt = document.getElementById("job-attempt");
    attempt.textContent = attempt.textContent.replace(/^\d+/, String(state.attempt));
  }
  document.getElementById("job-cancelling").hidden = !(state.cancel_requested && !ended);
  document.getElementById("cancel-job").hidden = ended || state.cancel_requested;
  const error = document.getElementById("job-error");
  error.hidden = !state.error;
  error.textContent = state.error ? `${state.error_reason || "error"}: ${state.error}` : "";
}

/** A stream event: an epoch goes into the table (again, if replayed: the same row); a status
 * older than what the page shows is skipped, so the header never steps back. */
function onJobEvent(kind, data, id) {
  if (kind === "epoch") {
    addEpoch(data);
    return;
  }
  if (kind !== "status" || Number(id) <= seenSeq) return;
  seenSeq = Number(id);
  showState(data);
}

async function refreshCheckpoints() {
  let listing;
  try {
    listing = await api(`/jobs/${jobId}/checkpoints`);
  } catch {
    return; // the table keeps what it showed; the next epoch tries again
  }
  const body = document.getElementById("checkpoint-rows");
  const rows = listing.map((checkpoint) =>
    el(
      "tr",
      { dataset: { name: checkpoint.name, state: checkpoint.state } },
      el("td", {}, checkpoint.name),
      el("td", {}, checkpoint.epoch),
      el("td", {}, `${(checkpoint.size_bytes / 1e6).toFixed(1)} MB`),
      el("td", {}, el("code", {}, `${checkpoint.sha256.slice(0, 12)}…`)),
      ...(checkpoint.state === "intact"
        ? [
            el("td", {}, "intact"),
            el("td", {}, el("a", { href: `/jobs/${jobId}/checkpoints/${encodeURIComponent(checkpoint.name)}`, download: true }, `job-${jobId}-${checkpoint.name}.pt`)),
          ]
        : [el("td", { class: "problem" }, checkpoint.state), el("td", { class: "muted" }, "not served")]),
    ),
  );
  body.replaceChildren(...(rows.length ? rows : [el("tr", { class: "empty" }, el("td", { colspan: 6 }, "No checkpoint yet."))]));
}
const scheduleCheckpoints = debounced(refreshCheckpoints, 500);

async function finish() {
  setLiveMode("ended");
  try {
    showState(await api(`/jobs/${jobId}`));
  } catch (error) {
    document.getElementById("cancel-message").textContent = describeError(error);
  }
  refreshCheckpoints();
}

/** For servers without the event stream: the job and its new epochs every 2 s. */
async function poll() {
  try {
    const job = await api(`/jobs/${jobId}`);
    showState(job);
    const since = Math.max(0, ...epochs.keys());
    const metrics = await api(`/jobs/${jobId}/metrics?since_epoch=${since}`);
    metrics.metrics.forEach(addEpoch);
    if (job.ended) {
      finish();
      return;
    }
  } catch (error) {
    document.getElementById("cancel-message").textContent = describeError(error);
  }
  setTimeout(poll, POLL_MILLISECONDS);
}

guardWrites(document.getElementById("job").dataset.owner, [[document.getElementById("cancel-job"), "cancel"]]);
postButton(document.getElementById("cancel-job"), `/jobs/${jobId}/cancel`, (job) => {
  showState(job);
  return job.status === "cancelled" ? "Cancelled." : "Cancel requested: the job stops at its next batch.";
});

initial.metrics.forEach((row) => epochs.set(row.epoch, row));
drawCurves();
showProgress();
if (ended) {
  setLiveMode("ended");
} else {
  setTimeout(refreshQueuePlace, QUEUE_REFRESH_MILLISECONDS);
  // From the job's last event at the page's rendering: the history before it is on the page.
  followEvents(`/jobs/${jobId}/events?last_event_id=${seenSeq}`, {
    onEvent: onJobEvent,
    onEnd: finish,
    onUnavailable: () => {
      setLiveMode("polling");
      poll();
    },
  });
}
