// The helpers every page script shares: element lookup and building, number and time formats, the
// job-status set, the one fetch helper, and the box overlay. A native ES module (no build step):
// page scripts `import { … } from "./common.js"`; htmx and Chart.js stay global vendored scripts.

// ------------------------------------------------------------------ DOM
export const $ = (id) => document.getElementById(id);

// el("td", { class: "num", text: "3" }, child, …): attributes that are null/undefined/false are left out.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// Ask the htmx-driven parts listening for `<event> from:body` to reload.
export function announce(event) {
  htmx.trigger(document.body, event);
}

// ------------------------------------------------------------------ job status
// A job that still waits for or holds a cluster slot (training, evaluation, export).
export const ACTIVE = ["queued", "running"];
export const isActive = (status) => ACTIVE.includes(status);

// ------------------------------------------------------------------ formats
const missing = (v) => v === null || v === undefined || Number.isNaN(v);
export const f3 = (v) => (missing(v) ? "—" : Number(v).toFixed(3));
export const pct = (v, digits = 1) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(digits)}%`);
// Significant digits without trailing zeros: 0.1234567 → "0.1235", 2.5 → "2.5".
export function fmtNum(v, digits = 4) {
  return missing(v) ? "—" : Number(v).toPrecision(digits).replace(/\.?0+(e|$)/, "$1");
}
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}
export function parseUtc(iso) { // the database hands back naive UTC timestamps
  return new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`);
}

// ------------------------------------------------------------------ errors and the API
// What a page shows for an error envelope: the message without the code and without "Invalid
// request — " ("name: must not be empty": the field keeps the name the API and the docs use);
// ids the page knows a name for (experiment rows, project rows, split options) read as “name”.
export function humanError(error) {
  if (!error) return "";
  const text = String(error.message || error.code || "").replace(/^Invalid request — /, "");
  const names = namesOnPage();
  return text.replace(/^body: /, "Request: ").replace(/\b(?:exp|proj|split)-[0-9a-f]{12}\b/g, (id) => (names.has(id) ? `“${names.get(id)}”` : id));
}

function namesOnPage() {
  const names = new Map();
  for (const row of document.querySelectorAll("tr[data-experiment-id][data-name]")) names.set(row.dataset.experimentId, row.dataset.name);
  for (const b of document.querySelectorAll("tr[data-project-id] button.rename[data-name]")) {
    names.set(b.closest("tr").dataset.projectId, b.dataset.name);
  }
  for (const o of document.querySelectorAll("option[value^='split-']")) names.set(o.value, o.textContent.split(" — ")[0].trim());
  return names;
}

// A failed action's toast stays until it times out or the next action succeeds.
export function clearToasts() {
  for (const t of document.querySelectorAll(".toast")) t.remove();
}

export function toast(message) {
  const t = document.createElement("div");
  t.className = "toast";
  t.setAttribute("role", "alert");
  t.textContent = message;
  document.body.appendChild(t);
  setTimeout(() => t.remove(), 6000);
}

// A delete refused because jobs use what it removes (409 naming them) may be retried with
// `?force=true`, which stops those jobs first: the page asks the user before doing so.
export const offersForce = (status, body) =>
  status === 409 && Boolean(body && body.error && body.error.message.includes("?force=true"));
export const confirmForce = (message) =>
  window.confirm(`${message}\n\nStop those jobs now and delete?`);
export const withForce = (url) => `${url}${url.includes("?") ? "&" : "?"}force=true`;

// The one fetch helper for pages: JSON (or FormData) in, the envelope's data out; an error
// envelope is shown in `errorBox` (or a toast) and thrown.
export async function api(method, url, body, errorBox) {
  if (errorBox) errorBox.textContent = "";
  const isForm = body instanceof FormData;
  const res = await fetch(url, {
    method,
    headers: body && !isForm ? { "Content-Type": "application/json" } : {},
    body: isForm ? body : body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (method === "DELETE" && offersForce(res.status, data) && confirmForce(data.error.message)) {
    return api(method, withForce(url), body, errorBox);
  }
  if (!res.ok || data.status === "error") {
    const msg = data.error ? humanError(data.error) : `Request failed (${res.status})`;
    if (errorBox) errorBox.textContent = msg; else toast(msg);
    throw new Error(msg);
  }
  if (method !== "GET") clearToasts(); // the condition a toast reported is gone
  return data.data;
}

// ------------------------------------------------------------------ box overlay
export const GT_COLOR = "#22c55e";
export const PRED_COLOR = "#ef4444";

// Indices of the predictions scored at least `minScore`, and the label "cat 87%" of one of them.
export const keptIndices = (scores, minScore) => scores.map((s, i) => (s >= minScore ? i : -1)).filter((i) => i >= 0);
export const scoredLabel = (name, score) => `${name} ${(100 * score).toFixed(0)}%`;

// Draw boxes (original-image pixels, [x1, y1, x2, y2]) into an SVG whose viewBox is the original
// size; with preserveAspectRatio "meet" it lines up with an <img> shown with object-fit: contain.
// `layers`: [{ boxes, color, labels?, dashed? }]; dashed layers are predictions, the others truth.
export function drawBoxes(svg, width, height, layers, withLabels) {
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const font = Math.max(width, height) * 0.035;
  for (const { boxes, color, labels, dashed } of layers) {
    boxes.forEach((b, i) => {
      const [x1, y1, x2, y2] = b;
      const rect = svgEl("rect", {
        x: x1, y: y1, width: Math.max(0, x2 - x1), height: Math.max(0, y2 - y1), fill: "none", stroke: color,
        "stroke-width": 2, "vector-effect": "non-scaling-stroke", class: dashed ? "pred-box" : "gt-box",
      });
      if (dashed) rect.setAttribute("stroke-dasharray", "5 3");
      if (labels?.[i]) {
        const t = svgEl("title");
        t.textContent = labels[i];
        rect.append(t);
      }
      svg.append(rect);
      if (withLabels && labels?.[i]) {
        const text = svgEl("text", { x: x1 + font * 0.2, y: Math.max(font, dashed ? y2 - font * 0.25 : y1 + font), fill: "#fff",
          "font-size": font, stroke: color, "stroke-width": font * 0.22, "paint-order": "stroke", "font-family": "system-ui, sans-serif" });
        text.textContent = labels[i];
        svg.append(text);
      }
    });
  }
}
