// Deploy page: start an endpoint (the API key is shown once), list the project's endpoints with their
// live figures (polled from /api/deployments), copy a curl, Undeploy, and a "try it" box that sends an
// image to /models/<name>/predict and draws the answer (top-5 bars, or boxes on the image).
import { $, api, drawBoxes, el, fmtNum, PRED_COLOR, scoredLabel, toast } from "./common.js";

const root = $("deploy-page");
const pid = root.dataset.projectId;
const form = $("deploy-form");
const keys = {}; // endpoint name → API key created in this page (never fetched again: stored hashed)
let endpoints = [];

const absolute = (url) => `${location.origin}${url}`;
const curlOf = (d) =>
  `curl -X POST ${d.auth === "key" ? `-H "Authorization: Bearer ${keys[d.name] || "<api_key>"}" ` : ""}` +
  `-F "file=@image.jpg" ${absolute(d.url)}`;

form.addEventListener("submit", async (evt) => {
  evt.preventDefault();
  if (!form.reportValidity()) return;
  const v = (id) => $(id).value;
  const body = {
    project_id: pid, export_id: v("deploy-export"), name: v("deploy-name").trim(),
    min_replicas: Number(v("deploy-min")), max_replicas: Number(v("deploy-max")),
    gpu_fraction: Number(v("deploy-gpu") || 0), max_batch_size: Number(v("deploy-batch")),
    batch_wait_ms: Number(v("deploy-wait")), auth: form.querySelector("input[name=auth]:checked").value,
  };
  $("deploy-submit").disabled = true;
  try {
    const created = await api("POST", "/api/deployments", body, $("deploy-error"));
    if (created.api_key) {
      keys[created.name] = created.api_key;
      $("key-name").textContent = created.name;
      $("key-value").textContent = created.api_key;
      $("key-box").hidden = false;
    } else {
      $("key-box").hidden = true;
    }
    $("deploy-name").value = "";
    await refresh();
    $("try-endpoint").value = created.name;
    syncKey();
  } catch { /* shown in the error box */ } finally {
    $("deploy-submit").disabled = false;
  }
});

$("key-copy").addEventListener("click", () => copy($("key-value").textContent));

async function copy(text) {
  try { await navigator.clipboard.writeText(text); toast("Copied"); } catch { toast("Copy failed: select the text instead"); }
}

function figure(label, value) {
  return el("div", { class: "figure" }, el("span", { class: "muted small", text: label }), el("b", { text: value }));
}

function card(d) {
  const m = d.metrics;
  const head = el("div", { class: "row endpoint-head" },
    el("b", { class: "endpoint-name", text: d.name }),
    el("span", { class: `pill ${d.status === "deploying" ? "queued" : d.status === "running" ? "completed" : d.status}`, text: d.status }),
    el("span", { class: "muted small", text: `${d.experiment_name || ""} · ${d.model || ""} · ${d.format} · ${d.auth === "key" ? "API key" : "open"}` }),
    el("span", { class: "grow" }),
    el("button", { type: "button", class: "danger small-btn", "data-action": "undeploy", "data-id": d.id, text: "Undeploy" }));
  const url = el("div", { class: "endpoint-url" }, el("span", { class: "muted small", text: "POST " }), el("code", { text: absolute(d.url) }));
  const curl = el("div", { class: "curl" }, el("code", { class: "curl-text", text: curlOf(d) }),
    el("button", { type: "button", class: "secondary small-btn", "data-action": "copy", "data-name": d.name, text: "Copy curl" }));
  const figures = el("div", { class: "figures" },
    figure("replicas", `${d.replicas.running} / ${d.replicas.target}`),
    figure("requests", String(m.requests)), figure("errors", String(m.errors)),
    figure("p50", m.p50_ms === null ? "—" : `${fmtNum(m.p50_ms, 3)} ms`),
    figure("p99", m.p99_ms === null ? "—" : `${fmtNum(m.p99_ms, 3)} ms`),
    figure("req/s", fmtNum(m.rps, 3)));
  const node = el("div", { class: "endpoint", "data-name": d.name, "data-status": d.status }, head, url, curl, figures);
  if (d.error) node.append(el("p", { class: "error", text: d.error }));
  return node;
}

async function refresh() {
  try {
    endpoints = await api("GET", `/api/deployments?project_id=${pid}`, null, $("endpoints-error"));
  } catch { return; }
  const list = $("endpoint-list");
  list.replaceChildren(...(endpoints.length ? endpoints.map(card) : [el("p", { class: "muted", text: "No endpoint yet." })]));
  const select = $("try-endpoint");
  const chosen = select.value;
  select.replaceChildren(...endpoints.map((d) => el("option", { value: d.name, text: `${d.name} (${d.status})` })));
  if (endpoints.some((d) => d.name === chosen)) select.value = chosen;
}

$("endpoint-list").addEventListener("click", async (evt) => {
  const button = evt.target.closest("button[data-action]");
  if (!button) return;
  if (button.dataset.action === "copy") {
    const d = endpoints.find((x) => x.name === button.dataset.name);
    if (d) copy(curlOf(d));
    return;
  }
  const d = endpoints.find((x) => x.id === button.dataset.id);
  if (!d || !confirm(`Undeploy ${d.name}? Its URL stops answering.`)) return;
  button.disabled = true;
  button.textContent = "Undeploying…";
  await api("DELETE", `/api/deployments/${d.id}`, null, $("endpoints-error")).catch(() => null);
  if ($("key-name").textContent === d.name) $("key-box").hidden = true;
  if ($("try-endpoint").value === d.name) {
    $("try-result").hidden = true;
    $("try-error").textContent = "";
    $("try-key").value = "";
  }
  delete keys[d.name];
  refresh();
});

function syncKey() {
  const name = $("try-endpoint").value;
  if (keys[name]) $("try-key").value = keys[name];
}
$("try-endpoint").addEventListener("change", syncKey);

async function tryImage(file) {
  $("try-error").textContent = "";
  const d = endpoints.find((x) => x.name === $("try-endpoint").value);
  if (!d) { $("try-error").textContent = "Deploy an endpoint first."; return; }
  const headers = { "Content-Type": file.type || "application/octet-stream" };
  const key = $("try-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const started = performance.now();
  // Right after a deploy, HAProxy's previous process still serves this page's open keep-alive connection
  // with its old routes: the request reaches the UI's app ("Route … not found"), and the connection closes.
  // The next attempt goes over a new connection, to the new routes (docs/api.md, the ingress).
  let res, body;
  for (let attempt = 0; ; attempt++) {
    res = await fetch(d.url, { method: "POST", headers, body: file });
    body = await res.json().catch(() => ({}));
    const misrouted = res.status === 404 && body.error && body.error.message.startsWith("Route ");
    if (!misrouted || attempt === 2) break;
    await new Promise((done) => setTimeout(done, 300));
  }
  if (!res.ok) {
    $("try-result").hidden = true; // an old answer beside the error would read as this image's
    $("try-error").textContent = body.error ? `${body.error.code}: ${body.error.message}` : `Request failed (${res.status})`;
    return;
  }
  const ms = performance.now() - started;
  const img = $("try-image");
  img.src = URL.createObjectURL(file);
  await img.decode().catch(() => null);
  const data = body.data;
  const bars = $("try-bars");
  const svg = $("try-boxes");
  if (data.predictions) {
    drawBoxes(svg, img.naturalWidth, img.naturalHeight, [], false);
    $("try-badge").textContent = scoredLabel(data.predictions[0].label, data.predictions[0].score);
    bars.replaceChildren(...data.predictions.map((p, i) => el("div", { class: `bar-row${i === 0 ? " top" : ""}` },
      el("span", { class: "bar-name", text: p.label }),
      el("span", { class: "bar" }, el("span", { style: `width:${(100 * p.score).toFixed(1)}%` })),
      el("span", { class: "num", text: `${(100 * p.score).toFixed(1)}%` }))));
  } else {
    const dets = data.detections;
    $("try-badge").textContent = `${dets.length} box${dets.length === 1 ? "" : "es"}`;
    drawBoxes(svg, img.naturalWidth, img.naturalHeight,
      [{ boxes: dets.map((x) => x.box), color: PRED_COLOR, labels: dets.map((x) => scoredLabel(x.label, x.score)), dashed: true }], true);
    bars.replaceChildren(...dets.slice(0, 10).map((x) => el("div", { class: "bar-row" },
      el("span", { class: "bar-name", text: x.label }),
      el("span", { class: "bar" }, el("span", { style: `width:${(100 * x.score).toFixed(1)}%` })),
      el("span", { class: "num", text: `${(100 * x.score).toFixed(1)}%` }))));
  }
  $("try-latency").textContent = `${data.model} answered in ${ms.toFixed(0)} ms (round trip from this browser)`;
  $("try-result").hidden = false;
}

$("try-file").addEventListener("change", (evt) => {
  const f = evt.target.files[0];
  evt.target.value = ""; // choosing the same file again must send it again
  if (f) tryImage(f);
});
const drop = $("try-drop");
drop.addEventListener("dragover", (evt) => { evt.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (evt) => {
  evt.preventDefault();
  drop.classList.remove("over");
  const f = evt.dataTransfer.files[0];
  if (f) tryImage(f);
});

refresh();
setInterval(() => { if (!document.hidden) refresh(); }, 2000);
