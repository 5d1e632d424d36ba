// The experiments under the jobs list, from GET /experiments (newest first, of the owner the
// jobs are filtered by), and with accounts on, the "Only mine" filter from GET /me.

import { api, describeError, el, whoAmI } from "./common.js";

const box = document.getElementById("experiments");
const owner = box.dataset.owner;
const accounts = document.body.dataset.accounts === "on";

function table(experiments) {
  const rows = experiments.map((experiment) =>
    el(
      "tr",
      { dataset: { experimentId: experiment.id, status: experiment.status, owner: experiment.owner || "" } },
      el("td", {}, el("a", { href: `/ui/experiments/${Number(experiment.id)}` }, `#${experiment.id}`)),
      accounts ? el("td", { class: "owner" }, experiment.owner || "–") : null,
      el("td", { class: "name" }, experiment.name),
      el("td", {}, experiment.preset || (experiment.spec.search ? `search: ${experiment.spec.search.sampler}, ${experiment.spec.search.pruner.type}` : "")),
      el("td", {}, el("span", { class: `status status-${experiment.status}` }, experiment.status)),
      el("td", {}, Object.entries(experiment.status_counts || {}).filter(([, count]) => count > 0).map(([name, count]) => `${count} ${name}`).join(", ")),
      el("td", { class: "jobs" }, experiment.spec.search ? `${experiment.job_count}/${experiment.spec.search.max_trials} trials` : String(experiment.job_count)),
      el("td", {}, el("time", { datetime: experiment.created_at }, experiment.created_at.replace("T", " ").slice(0, 19))),
    ),
  );
  const titles = ["Experiment", ...(accounts ? ["Owner"] : []), "Name", "Kind", "Status", "Jobs by status", "Jobs", "Created (UTC)"];
  return el(
    "table",
    { class: "data", id: "experiment-list" },
    el("thead", {}, el("tr", {}, titles.map((title) => el("th", {}, title)))),
    el("tbody", {}, rows),
  );
}

/** "Only mine" links to this page filtered by the signed-in user's name (or, when it already
 * is, "Everyone's" links back), keeping the other filters. */
async function showMineFilter() {
  const link = document.getElementById("mine-filter");
  if (!link) return;
  const who = await whoAmI();
  if (!who.accounts || !who.name) return;
  const query = new URLSearchParams(window.location.search);
  query.delete("cursor");
  const mine = owner === who.name;
  if (mine) query.delete("owner");
  else query.set("owner", who.name);
  const text = query.toString();
  link.href = text ? `/?${text}` : "/";
  link.textContent = mine ? "Everyone's" : "Only mine";
  link.dataset.mine = String(mine);
  link.hidden = false;
}

showMineFilter();
try {
  const query = new URLSearchParams({ limit: "50" });
  if (owner) query.set("owner", owner);
  const page = await api(`/experiments?${query}`);
  box.replaceChildren(
    page.items.length
      ? table(page.items)
      : el("p", { class: "muted" }, owner ? `No experiments of ${owner}.` : el("span", {}, "No experiments yet: ", el("a", { href: "/ui/submit" }, "submit one"), ".")),
  );
  if (page.next) box.append(el("p", { class: "muted" }, `The newest ${page.items.length}; older ones: cifar-jobs experiment list --all, or GET ${page.next}.`));
} catch (error) {
  const text = error.status === 404 ? "This server has no experiments API (GET /experiments answers 404)." : describeError(error);
  box.replaceChildren(el("p", { class: "muted" }, text));
}
