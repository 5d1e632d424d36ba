// The experiments under the jobs list, from GET /experiments (newest first).

import { api, describeError, el } from "./common.js";

const box = document.getElementById("experiments");

function table(experiments) {
  const rows = experiments.map((experiment) =>
    el(
      "tr",
      { dataset: { experimentId: experiment.id, status: experiment.status } },
      el("td", {}, el("a", { href: `/ui/experiments/${Number(experiment.id)}` }, `#${experiment.id}`)),
      el("td", { class: "name" }, experiment.name),
      el("td", {}, experiment.preset || (experiment.spec.search ? `search: ${experiment.spec.search.sampler}, ${experiment.spec.search.pruner.type}` : "")),
      el("td", {}, el("span", { class: `status status-${experiment.status}` }, experiment.status)),
      el("td", {}, Object.entries(experiment.status_counts || {}).filter(([, count]) => count > 0).map(([name, count]) => `${count} ${name}`).join(", ")),
      el("td", { class: "jobs" }, experiment.spec.search ? `${experiment.job_count}/${experiment.spec.search.max_trials} trials` : String(experiment.job_count)),
      el("td", {}, el("time", { datetime: experiment.created_at }, experiment.created_at.replace("T", " ").slice(0, 19))),
    ),
  );
  return el(
    "table",
    { class: "data", id: "experiment-list" },
    el("thead", {}, el("tr", {}, ["Experiment", "Name", "Kind", "Status", "Jobs by status", "Jobs", "Created (UTC)"].map((title) => el("th", {}, title)))),
    el("tbody", {}, rows),
  );
}

try {
  const page = await api("/experiments?limit=50");
  box.replaceChildren(
    page.items.length
      ? table(page.items)
      : el("p", { class: "muted" }, "No experiments yet: ", el("a", { href: "/ui/submit" }, "submit one"), "."),
  );
  if (page.next) box.append(el("p", { class: "muted" }, `The newest ${page.items.length}; older ones: cifar-jobs experiment list --all, or GET ${page.next}.`));
} catch (error) {
  const text = error.status === 404 ? "This server has no experiments API (GET /experiments answers 404)." : describeError(error);
  box.replaceChildren(el("p", { class: "muted" }, text));
}
