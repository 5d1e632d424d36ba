// The submit form: builds the JSON body of POST /jobs or POST /experiments from the filled-in
// inputs (an empty input is left out: the server's default applies), shows each 422 `fields`
// message beside its input, and opens the new job's or experiment's page.
//
// Values are not checked here: the API is the one validator, and text that is not a number is
// sent as text so that its message names the field.

import { api, ApiError, describeError, el } from "./common.js";

const form = document.getElementById("submit-form");
const formProblem = document.getElementById("form-problem");
const submitStatus = document.getElementById("submit-status");
const NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function newIdempotencyKey() {
  // crypto.randomUUID needs a secure context; getRandomValues works over plain http too.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `dashboard-${[...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("")}`;
}
// One key per filled-in form: a double click or a retry after a lost answer submits once.
let idempotencyKey = newIdempotencyKey();

const kind = () => form.querySelector('input[name="kind"]:checked').value;
const isReport = () => kind() === "experiment" && form.querySelector('[data-field="preset"]').value === "report";

function convert(text, type) {
  if (type === "int" || type === "float") return NUMBER.test(text) ? Number(text) : text;
  if (type === "bool") return text === "true";
  if (type === "json") {
    // Text that is not JSON goes as text: the API's 422 then names the field.
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

function valueOf(input) {
  const type = input.dataset.type;
  const text = input.value.trim();
  if (type.startsWith("list:")) {
    const parts = text.split(",").map((part) => part.trim()).filter((part) => part !== "");
    return parts.length ? parts.map((part) => convert(part, type.slice(5))) : undefined;
  }
  return text === "" ? undefined : convert(text, type);
}

function setPath(target, path, value) {
  const names = path.split(".");
  let node = target;
  for (const name of names.slice(0, -1)) node = node[name] ??= {};
  node[names.at(-1)] = value;
}

/** The request body from the enabled, filled-in inputs. */
function body() {
  const result = {};
  const checked = new Map();
  for (const input of form.querySelectorAll("[data-field]")) {
    if (input.disabled) continue;
    if (input.dataset.type === "checked") {
      if (!checked.has(input.dataset.field)) checked.set(input.dataset.field, []);
      if (input.checked) checked.get(input.dataset.field).push(input.value);
      continue;
    }
    const value = valueOf(input);
    if (value !== undefined) setPath(result, input.dataset.field, value);
  }
  for (const [field, values] of checked) if (values.length) setPath(result, field, values);
  return result;
}

/** Show what fits the choice: job or experiment, and for the report preset only its inputs. */
function arrange() {
  const current = kind();
  const report = isReport();
  for (const node of form.querySelectorAll("[data-kind]")) node.hidden = node.dataset.kind !== current;
  for (const node of form.querySelectorAll("[data-report-only]")) node.hidden = !report;
  for (const input of form.querySelectorAll("[data-field]")) {
    const holder = input.closest("[data-kind]");
    const wrongKind = holder !== null && holder.dataset.kind !== current;
    const notInReport = report && input.closest("[data-report-allowed]") === null;
    input.disabled = wrongKind || notInReport;
  }
}

function clearProblems() {
  for (const node of form.querySelectorAll("[data-error-for]")) node.textContent = "";
  for (const node of form.querySelectorAll("[aria-invalid]")) node.removeAttribute("aria-invalid");
  formProblem.hidden = true;
  formProblem.replaceChildren();
}

/** Each message beside the input whose field is the longest prefix of the message's field
 * ("hyperparameters.epochs", "seeds.1" -> "seeds"); the rest above the submit button. */
function showProblems(fields, detail) {
  const targets = [...form.querySelectorAll("[data-error-for]")].filter((node) => !node.closest("[hidden]"));
  const unplaced = [];
  for (const { field, message } of fields) {
    const matches = targets.filter((node) => field === node.dataset.errorFor || field.startsWith(`${node.dataset.errorFor}.`));
    const target = matches.sort((a, b) => b.dataset.errorFor.length - a.dataset.errorFor.length)[0];
    if (!target) {
      unplaced.push(`${field}: ${message}`);
      continue;
    }
    target.textContent = target.textContent ? `${target.textContent}; ${message}` : message;
    for (const input of form.querySelectorAll(`[data-field="${CSS.escape(target.dataset.errorFor)}"]`)) input.setAttribute("aria-invalid", "true");
  }
  if (unplaced.length || !fields.length) {
    formProblem.replaceChildren(...(unplaced.length ? unplaced : [detail]).map((text) => el("span", {}, text)));
    formProblem.hidden = false;
  }
}

form.addEventListener("change", (event) => {
  if (event.target.name === "kind" || event.target.dataset.field === "preset") arrange();
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearProblems();
  const button = document.getElementById("submit-button");
  const experiment = kind() === "experiment";
  button.disabled = true;
  submitStatus.textContent = "Submitting…";
  try {
    const created = await api(experiment ? "/experiments" : "/jobs", {
      method: "POST",
      body: body(),
      headers: { "Idempotency-Key": idempotencyKey },
    });
    idempotencyKey = newIdempotencyKey();
    submitStatus.textContent = "Submitted.";
    window.location.assign(`/ui/${experiment ? "experiments" : "jobs"}/${Number(created.id)}`);
  } catch (error) {
    submitStatus.textContent = "";
    if (!(error instanceof ApiError)) showProblems([], `The request did not reach the server: ${error}`);
    else if (error.status === 404 && experiment) showProblems([], "This server has no experiments API (POST /experiments answers 404).");
    else if (error.status === 401) showProblems([], describeError(error));
    else showProblems(error.body.fields || [], `${error.body.error || "error"}: ${error.message}`);
  } finally {
    button.disabled = false;
  }
});

arrange();
