// Shared by the dashboard's pages: calls to the JSON API, number formats, building elements
// (data only ever becomes text: textContent and attributes, never markup), and following an
// event stream with a polling fallback.

export const POLL_MILLISECONDS = 2000;

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && body.detail ? body.detail : `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.body = body || {};
  }
}

/** The API's JSON answer; an ApiError with its {error, detail, fields} body otherwise. */
export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = { detail: text.slice(0, 200) };
  }
  if (!response.ok) throw new ApiError(response.status, parsed);
  return parsed;
}

/** What to tell a person about a failed call. */
export function describeError(error) {
  if (error instanceof ApiError && error.status === 401) {
    // The API says why: signed out, the token revoked, its user disabled, a new API_KEY.
    return `The server no longer takes this sign-in (${error.message}): sign in again at /ui/login.`;
  }
  return error instanceof ApiError ? `${error.body.error || "error"}: ${error.message}` : String(error);
}

/** An element with attributes and children; strings become text nodes. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const DASH = "–";
export const percent = (fraction) => (fraction == null ? DASH : `${(fraction * 100).toFixed(2)} %`);
export const millions = (count) => (count == null ? DASH : `${(count / 1e6).toFixed(2)} M`);
export const gmacs = (macs) => (macs == null ? DASH : `${(macs / 1e9).toFixed(2)} GMac`);
export const decimal = (value, places = 4) => (value == null ? DASH : Number(value).toFixed(places));

/** A status badge: its text and the class that colours it. */
export function setStatus(node, status) {
  node.textContent = status;
  node.className = `status status-${status}`;
}

/** The page's "live" badge: connecting, live (event stream), polling, finished. */
export function setLiveMode(mode) {
  const node = document.getElementById("live-mode");
  if (!node) return;
  const labels = {
    connecting: "connecting…",
    live: "live",
    polling: `polling every ${POLL_MILLISECONDS / 1000} s`,
    ended: "finished",
    offline: "not updating",
  };
  node.dataset.mode = mode;
  node.textContent = labels[mode] || mode;
}

/**
 * Follow a server-sent event stream: `onEvent(kind, data, id)` for each status and epoch event,
 * `onEnd(data)` once the server says everything ended. A dropped connection reconnects by
 * itself (the browser sends Last-Event-ID, and the server sends only later events); a refused
 * one (a server without the route answers 404) closes, and `onUnavailable()` takes over.
 */
export function followEvents(url, { onEvent, onEnd, onUnavailable }) {
  const source = new EventSource(url);
  source.addEventListener("open", () => setLiveMode("live"));
  // A search's stream also sends trial_created, trial_paused, trial_resumed, trial_pruned and
  // best_changed.
  for (const kind of [
    "status", "epoch", "trial_created", "trial_paused", "trial_resumed", "trial_pruned",
    "best_changed",
  ]) {
    source.addEventListener(kind, (message) => onEvent(kind, JSON.parse(message.data), message.lastEventId));
  }
  source.addEventListener("end", (message) => {
    source.close();
    setLiveMode("ended");
    onEnd(JSON.parse(message.data));
  });
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) onUnavailable();
  });
  return source;
}

/** A button that POSTs to `path` (a cancel): `describe(answer)` says what happened, in the
 * page's #cancel-message. */
export function postButton(button, path, describe) {
  button.addEventListener("click", async () => {
    const message = document.getElementById("cancel-message");
    button.disabled = true;
    try {
      message.textContent = describe(await api(path, { method: "POST" }));
    } catch (error) {
      message.textContent = describeError(error);
    } finally {
      button.disabled = false;
    }
  });
}

/** Run `task` after `milliseconds`, once, however often it is asked for meanwhile. */
export function debounced(task, milliseconds) {
  let timer = null;
  return () => {
    if (timer !== null) return;
    timer = setTimeout(() => {
      timer = null;
      task();
    }, milliseconds);
  };
}

let identity = null;

/**
 * Who is signed in, from GET /me, asked once per page: {name, role, accounts}. A server
 * without API_KEY has no accounts, and is not asked at all.
 */
export function whoAmI() {
  if (identity === null) {
    identity = document.body.dataset.accounts === "on"
      ? api("/me").catch(() => ({ name: null, role: "admin", accounts: false }))
      : Promise.resolve({ name: null, role: "admin", accounts: false });
  }
  return identity;
}

/** Why the signed-in user may not `verb` what `owner` owns; null when they may. */
export function refusal(who, owner, verb) {
  if (!who.accounts || who.role === "admin" || (owner && owner === who.name)) return null;
  return owner
    ? `Owned by ${owner}: only ${owner} or an admin may ${verb} it.`
    : `Owned by no one: only an admin may ${verb} it.`;
}

/**
 * The write buttons ([button, verb] pairs) of something `owner` owns, disabled for a member
 * who does not own it, each with the reason beside it (the API would answer 403).
 */
export async function guardWrites(owner, buttons) {
  const who = await whoAmI();
  for (const [button, verb] of buttons) {
    const reason = refusal(who, owner, verb);
    if (reason === null) continue;
    button.disabled = true;
    button.title = reason;
    button.dataset.refused = "owner";
    button.after(el("span", { class: "write-reason", dataset: { reasonFor: button.id } }, reason));
  }
}
