// Training page: experiment row actions, the new-experiment form helpers, and the live panel
// (Chart.js curves + stats + log tail) fed by the run's server-sent events.
import { $, announce, api, fmtDuration, fmtNum, isActive, parseUtc } from "./common.js";

const root = $("training-page");
const pid = root.dataset.projectId;
const base = `/api/training/${pid}/experiments`;

function call(method, url, body, errorBox = $("experiments-action-error")) {
  return api(method, url, body, errorBox);
}

const refreshTable = () => announce("experiments-changed");

// ------------------------------------------------------------------ charts
function lineChart(canvas, datasets, yOptions, plugins = []) {
  return new Chart(canvas, {
    type: "line",
    plugins,
    data: { labels: [], datasets },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
      scales: {
        x: { title: { display: true, text: "epoch" }, grid: { display: false } },
        y: { ...yOptions, ticks: { maxTicksLimit: 6 } },
      },
    },
  });
}
// Issue #13: the val accuracy of always answering the most frequent val class, a dashed line across
// the val chart (drawn whatever the number of epochs). `chart.$baseline`: {share, class_name} or null.
const baselinePlugin = {
  id: "majorityBaseline",
  afterDatasetsDraw(chart) {
    const b = chart.$baseline;
    if (!b) return;
    const { ctx, chartArea: area, scales: { y } } = chart;
    const py = y.getPixelForValue(b.share);
    ctx.save();
    ctx.strokeStyle = "#a02f2f";
    ctx.fillStyle = "#a02f2f";
    ctx.lineWidth = 1.5;
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(area.left, py);
    ctx.lineTo(area.right, py);
    ctx.stroke();
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.fillText(`majority baseline: always '${b.class_name}' ${(100 * b.share).toFixed(1)}%`, area.right - 4, py - 4);
    ctx.restore();
  },
};
const series = (label, color) => ({
  label, data: [], borderColor: color, backgroundColor: color, pointRadius: 3, borderWidth: 2, tension: 0.2, spanGaps: true,
});
const charts = {
  loss: lineChart($("loss-chart"), [series("train loss", "#3a5bd9"), series("val loss", "#e39b2d")], { beginAtZero: true }),
  metric: lineChart($("metric-chart"), [series("val metric", "#2e9d5b")], { suggestedMin: 0, suggestedMax: 1 }, [baselinePlugin]),
};

// ------------------------------------------------------------------ live panel state
const live = {
  id: null, exp: null, epochs: new Map(), status: null, source: null, token: 0,
  logLines: new Set(), retry: null, stopping: false, progress: null,
};

function drawCharts() {
  const rows = [...live.epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const labels = rows.map((r) => r.epoch);
  charts.loss.data.labels = labels;
  charts.loss.data.datasets[0].data = rows.map((r) => r.train_loss);
  charts.loss.data.datasets[1].data = rows.map((r) => r.val_loss);
  charts.metric.data.labels = labels;
  charts.metric.data.datasets[0].data = rows.map((r) => r.val_metric);
  // Issue #13: the val accuracy of always answering the most frequent val class, beside each epoch's.
  charts.metric.$baseline = live.exp?.majority_baseline || null;
  charts.loss.update();
  charts.metric.update();
  $("live-panel").dataset.points = String(rows.length);
}

function renderStats() {
  const exp = live.exp;
  const status = live.status;
  const pill = $("live-status");
  pill.hidden = !status;
  pill.className = `pill ${status || ""}`;
  pill.textContent = live.stopping && isActive(status) ? (status === "running" ? "stopping after this epoch…" : "stopping…") : status || "";
  if (!exp) return;
  const rows = [...live.epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const last = rows[rows.length - 1];
  const planned = (last && last.epochs) || exp.epochs || 0;
  const done = last ? last.epoch : exp.epochs_done;
  $("live-epoch").textContent = `${done} / ${planned}`;
  $("live-speed").textContent = last && last.images_per_s ? last.images_per_s.toFixed(1) : "—";
  const mean = rows.length ? rows.reduce((a, r) => a + (r.seconds || 0), 0) / rows.length : null;
  const p = status === "running" && live.progress && live.progress.epoch > done ? live.progress : null;
  renderProgress(p);
  if (p && p.batch > 0) {
    // Inside an epoch: this epoch's remaining batches at its own pace, then the epochs left at the
    // mean epoch time so far (or this epoch's pace before any epoch ended).
    const perBatch = p.elapsed_s / p.batch;
    const epochEstimate = mean ?? (p.batches ? perBatch * p.batches : 0);
    const rest = p.batches ? perBatch * Math.max(0, p.batches - p.batch) : 0;
    $("live-eta").textContent = fmtDuration(rest + epochEstimate * Math.max(0, planned - p.epoch));
  } else if (status === "running" && rows.length) {
    $("live-eta").textContent = fmtDuration(mean * Math.max(0, planned - done));
  } else if (status === "running") {
    $("live-eta").textContent = "after epoch 1";
  } else if (status === "queued") {
    $("live-eta").textContent = "starting…";
  } else {
    $("live-eta").textContent = "—";
  }
  const metrics = rows.map((r) => r.val_metric).filter((v) => v !== null && v !== undefined);
  const best = exp.best_metric ?? (metrics.length ? Math.max(...metrics) : null);
  $("live-best").textContent = best === null || best === undefined ? "—" : Number(best).toFixed(4);
  $("live-metric-name").textContent = `Best ${exp.metric_name}`;
  $("live-val-loss").textContent = last ? fmtNum(last.val_loss) : "—";
  const known = [exp.best_metric, ...metrics].filter((v) => v !== null && v !== undefined);
  renderBaselineFlag(exp, known.length ? Math.max(...known) : null);
  $("live-error").textContent = exp.error && ["failed", "interrupted"].includes(status) ? exp.error : "";
  const note = $("live-stop-note");
  note.hidden = !(live.stopping && isActive(status));
  note.textContent = status === "queued"
    ? "Stop requested: the run ends before it starts training."
    : `Stop requested: training stops at the end of the current epoch (epoch ${Math.min(done + 1, planned)} of ${planned}); its checkpoint is kept, so you can resume.`;
}

function renderProgress(p) {
  const bar = $("live-progress");
  bar.hidden = !p;
  const panel = $("live-panel");
  if (!p) {
    $("live-batch").textContent = "—";
    delete panel.dataset.batch;
    return;
  }
  const ofTotal = p.batches ? ` / ${p.batches}` : "";
  $("live-batch").textContent = `${p.batch}${ofTotal}`;
  $("live-batch").title = p.batches && p.batch >= p.batches ? "all batches done: validating" : `epoch ${p.epoch}`;
  bar.firstElementChild.style.width = p.batches ? `${((100 * p.batch) / p.batches).toFixed(1)}%` : "0%";
  panel.dataset.batch = `${p.epoch}:${p.batch}/${p.batches ?? ""}`;
}

// A run whose best val accuracy does not get one val image more right than always answering the
// most frequent val class (the server's rule; recomputed here as live epochs arrive).
function renderBaselineFlag(exp, best) {
  const flag = $("live-baseline-flag");
  const b = exp && exp.majority_baseline;
  const below = b && best !== null && best !== undefined && best * b.total < b.count + 0.5;
  flag.hidden = !below;
  flag.textContent = below ? `⚠ No better than always answering '${b.class_name}' (${(100 * b.share).toFixed(1)}%): ` +
    `best val accuracy ${Number(best).toFixed(4)} on ${b.total} val images` : "";
}

function setLog(text) {
  const pre = $("log-tail");
  const lines = text.split("\n").filter((l) => l !== "");
  live.logLines = new Set(lines.map(stripStamp));
  pre.textContent = lines.length ? lines.join("\n") : "No log yet.";
  pre.scrollTop = pre.scrollHeight;
}
// The log file prefixes "YYYY-MM-DD HH:MM:SS  "; live `log` events carry the bare line.
function stripStamp(line) { return line.replace(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d {2}/, ""); }
function appendLog(line) {
  if (live.logLines.has(line)) return; // already in the fetched tail (the bus replays a run's logs)
  live.logLines.add(line);
  const pre = $("log-tail");
  const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
  const d = new Date();
  const p = (n) => String(n).padStart(2, "0");
  const stamp = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  pre.textContent = (pre.textContent === "No log yet." ? "" : `${pre.textContent}\n`) + `${stamp}  ${line}`;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}
async function loadLog(id, token) {
  try {
    const res = await fetch(`${base}/${id}/logs`);
    const text = res.ok ? await res.text() : "";
    if (token === live.token) setLog(text);
  } catch (_) { /* keep what is shown */ }
}

function closeStream() {
  if (live.source) { live.source.close(); live.source = null; }
  clearTimeout(live.retry);
}

function markSelectedRow() {
  document.querySelectorAll("#experiment-list tr.exp-row").forEach((tr) => {
    tr.classList.toggle("selected", tr.dataset.experimentId === live.id);
  });
}

async function select(id) {
  closeStream();
  const token = ++live.token;
  Object.assign(live, { id, exp: null, status: null, epochs: new Map(), stopping: false, progress: null });
  markSelectedRow();
  if (location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
  $("live-name").textContent = "— loading…";
  $("live-error").textContent = "";
  drawCharts();
  let exp;
  try {
    exp = await call("GET", `${base}/${id}`, null, $("live-error"));
  } catch (_) {
    return;
  }
  if (token !== live.token) return;
  live.exp = exp;
  live.status = exp.status;
  for (const ev of exp.history || []) live.epochs.set(ev.epoch, ev);
  $("live-name").textContent = `— ${exp.name} · ${exp.model}`;
  $("metric-title").textContent = `Val ${exp.metric_name}`;
  charts.metric.data.datasets[0].label = `val ${exp.metric_name}`;
  drawCharts();
  renderStats();
  $("log-note").textContent = "";
  await loadLog(id, token);
  if (token !== live.token) return;
  if (isActive(exp.status)) openStream(id, token);
}

function openStream(id, token) {
  closeStream();
  const source = new EventSource(`${base}/${id}/stream`);
  live.source = source;
  $("log-note").textContent = "live";
  const mine = () => token === live.token && live.source === source;
  source.addEventListener("open", () => { if (mine()) $("log-note").textContent = "live"; });
  source.addEventListener("status", (e) => {
    if (!mine()) return;
    const data = JSON.parse(e.data);
    if (data.status !== live.status) refreshTable();
    live.status = data.status;
    renderStats();
  });
  source.addEventListener("epoch_end", (e) => {
    if (!mine()) return;
    const ev = JSON.parse(e.data);
    live.epochs.set(ev.epoch, ev);
    if (live.progress && live.progress.epoch <= ev.epoch) live.progress = null;
    if (live.exp) live.exp.epochs_done = Math.max(live.exp.epochs_done || 0, ev.epoch);
    if (live.status === "queued") live.status = "running";
    drawCharts();
    renderStats();
    refreshTable();
  });
  source.addEventListener("progress", (e) => {
    if (!mine()) return;
    live.progress = JSON.parse(e.data);
    if (live.status === "queued") live.status = "running";
    renderStats();
  });
  source.addEventListener("log", (e) => {
    if (mine()) appendLog(JSON.parse(e.data).line);
  });
  source.addEventListener("complete", (e) => {
    if (!mine()) return;
    const data = JSON.parse(e.data);
    closeStream();
    live.status = data.status;
    live.stopping = false;
    live.progress = null;
    if (live.exp) Object.assign(live.exp, { status: data.status, best_metric: data.best_metric, error: data.error });
    $("log-note").textContent = "";
    renderStats();
    refreshTable();
    loadLog(id, token); // the final lines (e.g. the failure reason) are written to the file only
  });
  source.onerror = () => {
    if (!mine()) return;
    if (source.readyState === EventSource.CLOSED) {
      // An error response (e.g. 503 while Ray is unreachable): the browser gives up; we retry.
      $("log-note").textContent = "live stream lost — retrying…";
      live.source = null;
      live.retry = setTimeout(() => { if (token === live.token) select(id); }, 5000);
    } else {
      $("log-note").textContent = "reconnecting…"; // the browser resends Last-Event-ID itself
    }
  };
}

// ------------------------------------------------------------------ row actions
const runBody = (id, extra = {}) => ({ project_id: pid, experiment_id: id, ...extra });
const actions = {
  async start(id) {
    await call("POST", "/api/training/run", runBody(id));
    refreshTable();
    select(id);
  },
  async resume(id) {
    await call("POST", "/api/training/run", runBody(id, { resume: true }));
    refreshTable();
    select(id);
  },
  async extend(id, row) {
    const planned = Number(row.dataset.epochs) || 0;
    const done = Number(row.dataset.epochsDone) || 0;
    const answer = prompt(`Extend “${row.dataset.name}” (${done} of ${planned} epochs done) to a new total of epochs:`,
      String(Math.max(planned, done) + 5));
    if (answer === null) return;
    const epochs = Number.parseInt(answer, 10);
    if (!Number.isInteger(epochs) || epochs <= done) {
      $("experiments-action-error").textContent = `Enter a whole number of epochs larger than ${done}.`;
      return;
    }
    await call("POST", "/api/training/run", runBody(id, { resume: true, epochs }));
    refreshTable();
    select(id);
  },
  async stop(id) {
    await call("POST", `${base}/${id}/stop`);
    if (live.id === id) { live.stopping = true; renderStats(); }
    refreshTable();
  },
  async delete(id, row) {
    if (!confirm(`Delete experiment “${row.dataset.name}” and its checkpoints?`)) return;
    await call("DELETE", `${base}/${id}`);
    if (live.id === id) clearPanel();
    refreshTable();
  },
};

function clearPanel() {
  closeStream();
  live.token++;
  Object.assign(live, { id: null, exp: null, status: null, epochs: new Map(), progress: null });
  history.replaceState(null, "", location.pathname + location.search);
  $("live-name").textContent = "— select an experiment";
  ["live-epoch", "live-batch", "live-speed", "live-eta", "live-best", "live-val-loss"].forEach((k) => { $(k).textContent = "—"; });
  $("live-error").textContent = "";
  $("live-baseline-flag").hidden = true;
  $("log-tail").textContent = "Select an experiment to see its log.";
  $("log-note").textContent = "";
  drawCharts();
  renderStats();
}

const list = $("experiment-list");
list.addEventListener("click", async (e) => {
  const row = e.target.closest("tr.exp-row");
  if (!row) return;
  const button = e.target.closest("button[data-action]");
  const id = row.dataset.experimentId;
  if (!button) { if (id !== live.id) select(id); return; }
  button.disabled = true;
  try {
    await actions[button.dataset.action](id, row);
  } catch (_) { /* shown in the error box */ } finally {
    button.disabled = false;
  }
});
list.addEventListener("keydown", (e) => {
  const row = e.target.closest && e.target.closest("tr.exp-row");
  if (row && e.target === row && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); select(row.dataset.experimentId); }
});

function tickDurations() {
  const now = Date.now();
  document.querySelectorAll("#experiment-list .duration[data-started]").forEach((el) => {
    // The ended attempts' seconds (resumes add up) plus this attempt's so far.
    el.textContent = fmtDuration(Number(el.dataset.base || 0) + (now - parseUtc(el.dataset.started).getTime()) / 1000);
  });
}
setInterval(tickDurations, 1000);

document.body.addEventListener("htmx:afterSwap", (e) => {
  if (e.detail.target !== list) return;
  markSelectedRow();
  tickDurations();
  // A selected run that became active elsewhere (e.g. `ray job submit`): follow it live.
  const row = live.id && list.querySelector(`tr.exp-row[data-experiment-id="${live.id}"]`);
  if (live.id && !row) clearPanel();
  else if (row && isActive(row.dataset.status) && !live.source && !isActive(live.status)) select(live.id);
});

// ------------------------------------------------------------------ new-experiment form
const form = $("create-experiment");
const modelSelect = $("model-select");
const sizeInput = $("image-size");
const pretrained = $("pretrained");
function syncModel() {
  const opt = modelSelect.selectedOptions[0];
  if (!opt) return;
  if (!sizeInput.dataset.touched) sizeInput.value = opt.dataset.defaultSize;
  const available = opt.dataset.weights === "yes";
  if (!pretrained.dataset.touched) pretrained.checked = available;
  $("weights-hint").textContent = available ? "(in the weights cache)" : `(not in the weights cache: ${opt.dataset.weightsFile})`;
}
if (modelSelect) {
  modelSelect.addEventListener("change", syncModel);
  sizeInput.addEventListener("input", () => { sizeInput.dataset.touched = "1"; });
  pretrained.addEventListener("change", () => { pretrained.dataset.touched = "1"; });
  syncModel();
}

function created(formEl) {
  const rows = list.querySelectorAll("tr.exp-row");
  formEl.elements.name.value = `Experiment ${rows.length + 1}`;
  if (rows[0]) select(rows[0].dataset.experimentId); // newest first: the one just created
}

// ------------------------------------------------------------------ start
window.addEventListener("beforeunload", closeStream);
window.trainingPage = { charts, live, select, created, refreshTable };
tickDurations();
const initial = location.hash.slice(1);
const firstRow = list.querySelector("tr.exp-row");
if (initial && list.querySelector(`tr.exp-row[data-experiment-id="${initial}"]`)) select(initial);
else if (firstRow) select(firstRow.dataset.experimentId);
if (form) form.dataset.ready = "1";
