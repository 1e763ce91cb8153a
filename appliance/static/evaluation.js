// Evaluation page: the evaluations list (view / compare / delete), one evaluation's details
// (headline metrics, sortable per-class table, confusion heatmap, PR curves, error gallery) and
// "try one image". Plain JS on top of htmx (the list and the gallery are server-rendered fragments).
(() => {
  const root = document.getElementById("evaluation-page");
  if (!root) return;
  const pid = root.dataset.projectId;
  const ACTIVE = ["queued", "running"];
  const SVG = "http://www.w3.org/2000/svg";
  const GT_COLOR = "#22c55e";
  const PRED_COLOR = "#ef4444";
  const PALETTE = ["#3a5bd9", "#e39b2d", "#2e9d5b", "#c43d3d", "#8b5cf6", "#0ea5e9", "#d946ef", "#84cc16", "#f97316", "#64748b"];
  const $ = (id) => document.getElementById(id);

  const state = {
    selected: null,       // evaluation id shown in the detail card
    shownStatus: null,    // its status when the detail was last drawn
    metrics: null,        // its metrics (completed only)
    sort: { key: "index", dir: 1 },
    gallery: { kind: "errors", label: "", cell: "" },
    compare: [],          // up to two evaluation ids, in the order they were ticked
    compareShown: null,   // the pair the comparison panel shows
    prChart: null,
    token: 0,
  };
  const completedCache = new Map(); // evaluation id -> public record with metrics (completed ones never change)
  const imageSizes = new Map();     // image id -> Promise<{width, height}>

  // ------------------------------------------------------------------ helpers
  const f3 = (v) => (v === null || v === undefined || Number.isNaN(v) ? "—" : Number(v).toFixed(3));
  const pct = (v, digits = 1) => (v === null || v === undefined ? "—" : `${(100 * v).toFixed(digits)}%`);
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  function svgEl(tag, attrs = {}) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  const call = api;

  async function getEvaluation(id) {
    if (completedCache.has(id)) return completedCache.get(id);
    const ev = await call("GET", `/api/evaluation/${pid}/${id}`);
    if (ev.status === "completed") completedCache.set(id, ev);
    return ev;
  }

  function imageSize(imageId) {
    if (!imageSizes.has(imageId)) {
      imageSizes.set(imageId, call("GET", `/api/datasets/${pid}/images/${imageId}`)
        .then((img) => ({ width: img.width, height: img.height }))
        .catch((err) => { imageSizes.delete(imageId); throw err; }));
    }
    return imageSizes.get(imageId);
  }

  function className(index) {
    const labels = state.metrics?.confusion_matrix?.labels || [];
    return labels[index] ?? `class ${index}`;
  }

  // Draw boxes (original-image pixels) into an SVG whose viewBox is the original size; with
  // preserveAspectRatio "meet" it lines up with an <img> shown with object-fit: contain.
  function drawBoxes(svg, width, height, layers, withLabels) {
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

  function detectionLayers(gt, pred, minScore) {
    const keep = (pred.scores || []).map((s, i) => (s >= minScore ? i : -1)).filter((i) => i >= 0);
    return [
      { boxes: gt.boxes || [], color: GT_COLOR, labels: (gt.labels || []).map((l) => `${className(l)} (truth)`) },
      { boxes: keep.map((i) => pred.boxes[i]), color: PRED_COLOR, dashed: true,
        labels: keep.map((i) => `${className(pred.labels[i])} ${(100 * pred.scores[i]).toFixed(0)}%`) },
    ];
  }
  const scoreThreshold = () => state.metrics?.confusion_matrix?.score_threshold ?? 0.25;

  // ------------------------------------------------------------------ the list
  function refreshList() { htmx.trigger(document.body, "evaluations-changed"); }

  function applyListState() {
    const rows = [...document.querySelectorAll("#evaluations-table tr.eval-row")];
    const byId = new Map(rows.map((r) => [r.dataset.evaluationId, r]));
    state.compare = state.compare.filter((id) => byId.get(id)?.dataset.status === "completed");
    for (const row of rows) {
      const id = row.dataset.evaluationId;
      row.classList.toggle("selected", id === state.selected);
      row.querySelector(".compare-check").checked = state.compare.includes(id);
    }
    renderCompare();
    if (state.selected) {
      const row = byId.get(state.selected);
      if (!row) closeDetail();
      else if (row.dataset.status !== state.shownStatus || ACTIVE.includes(row.dataset.status)) loadDetail();
    }
  }

  $("evaluation-list").addEventListener("click", async (evt) => {
    const row = evt.target.closest("tr.eval-row");
    if (!row) return;
    const id = row.dataset.evaluationId;
    const button = evt.target.closest("button[data-action]");
    if (button?.dataset.action === "delete") {
      if (!confirm(`Delete the evaluation of ${row.dataset.name} (${row.dataset.subset})?`)) return;
      await call("DELETE", `/api/evaluation/${pid}/${id}`, null, $("evaluations-error")).catch(() => null);
      completedCache.delete(id);
      state.compare = state.compare.filter((c) => c !== id);
      if (state.selected === id) closeDetail();
      refreshList();
      return;
    }
    if (evt.target.closest("input, label, .cmp-col")) return;
    select(id);
  });

  $("evaluation-list").addEventListener("change", (evt) => {
    const box = evt.target.closest(".compare-check");
    if (!box) return;
    const id = box.closest("tr.eval-row").dataset.evaluationId;
    state.compare = state.compare.filter((c) => c !== id);
    if (box.checked) state.compare.push(id);
    while (state.compare.length > 2) state.compare.shift(); // keep the two most recent ticks
    applyListState();
  });

  document.body.addEventListener("htmx:afterSwap", (evt) => {
    const target = evt.detail.target;
    if (target.id === "evaluation-list") applyListState();
    else if (target.id === "gallery") decorateGallery();
  });

  // ------------------------------------------------------------------ compare two evaluations
  $("compare-clear").addEventListener("click", () => { state.compare = []; applyListState(); });

  async function renderCompare() {
    const panel = $("compare-panel");
    const key = state.compare.join();
    if (key === state.compareShown) return;
    state.compareShown = key;
    if (state.compare.length < 2) {
      panel.hidden = state.compare.length === 0;
      $("compare-title").textContent = "Comparison";
      $("compare-body").replaceChildren(el("p", { class: "muted small", text: "Tick one more completed evaluation to compare." }));
      return;
    }
    panel.hidden = false;
    const ids = [...state.compare];
    let a; let b;
    try {
      [a, b] = await Promise.all(ids.map(getEvaluation));
    } catch (_) { state.compareShown = null; return; }
    if (ids.join() !== state.compare.join()) return; // changed meanwhile
    const label = (e) => `${e.experiment_name} · ${e.subset} · ${e.checkpoint}`;
    $("compare-title").textContent = "Comparison";
    const ma = a.metrics; const mb = b.metrics;
    if (!ma || !mb || ma.task !== mb.task) {
      $("compare-body").replaceChildren(el("p", { class: "warn", text: "These two evaluations are not of the same task." }));
      return;
    }
    const rows = [];
    const section = (text) => rows.push(el("tr", { class: "group" }, el("th", { colspan: 4, text })));
    const line = (name, va, vb) => {
      const d = va === null || va === undefined || vb === null || vb === undefined ? null : vb - va;
      const cls = d === null || Math.abs(d) < 0.0005 ? "delta same" : d > 0 ? "delta up" : "delta down";
      const dText = d === null ? "—" : Math.abs(d) < 0.0005 ? "±0.000" : `${d > 0 ? "+" : "−"}${Math.abs(d).toFixed(3)}`;
      rows.push(el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: f3(va) }), el("td", { class: "num", text: f3(vb) }),
        el("td", { class: `num ${cls}`, text: dText })));
    };
    if (ma.task === "classification") {
      section("Headline");
      line("Accuracy", ma.accuracy, mb.accuracy);
      if (ma.top5 !== null || mb.top5 !== null) line("Top-5 accuracy", ma.top5, mb.top5);
      for (const avg of ["macro", "weighted"]) for (const k of ["precision", "recall", "f1"]) {
        line(`${avg[0].toUpperCase()}${avg.slice(1)} ${k === "f1" ? "F1" : k}`, ma[avg][k], mb[avg][k]);
      }
    } else {
      section("Headline");
      line("mAP@[.5:.95]", ma.map, mb.map);
      line("mAP@.5", ma.map50, mb.map50);
      line("mAP@.75", ma.map75, mb.map75);
    }
    const field = ma.task === "classification" ? "f1" : "ap";
    section(ma.task === "classification" ? "Per-class F1" : "Per-class AP@[.5:.95]");
    const perB = new Map(mb.per_class.map((c) => [c.name, c]));
    const names = [...ma.per_class.map((c) => c.name), ...mb.per_class.map((c) => c.name).filter((n) => !ma.per_class.some((c) => c.name === n))];
    const perA = new Map(ma.per_class.map((c) => [c.name, c]));
    for (const n of names) line(n, perA.get(n)?.[field], perB.get(n)?.[field]);
    const table = el("table", { class: "table compact compare-table", id: "compare-table" },
      el("thead", {}, el("tr", {}, el("th", { text: "Metric" }),
        el("th", { class: "num", title: a.id }, el("span", { class: "tag-a", text: "A" }), ` ${label(a)}`),
        el("th", { class: "num", title: b.id }, el("span", { class: "tag-b", text: "B" }), ` ${label(b)}`),
        el("th", { class: "num", text: "Δ (B − A)" }))),
      el("tbody", {}, ...rows));
    $("compare-body").replaceChildren(table);
  }

  // ------------------------------------------------------------------ one evaluation
  function select(id) {
    if (state.selected !== id) {
      state.gallery = { kind: "errors", label: "", cell: "" };
      state.sort = { key: "index", dir: 1 };
    }
    state.selected = id;
    state.shownStatus = null;
    document.querySelectorAll("#evaluations-table tr.eval-row").forEach((r) => r.classList.toggle("selected", r.dataset.evaluationId === id));
    $("detail-card").hidden = false;
    loadDetail().then(() => $("detail-card").scrollIntoView({ behavior: "smooth", block: "start" }));
  }

  function closeDetail() {
    state.selected = null;
    state.shownStatus = null;
    state.metrics = null;
    $("detail-card").hidden = true;
    document.querySelectorAll("#evaluations-table tr.eval-row.selected").forEach((r) => r.classList.remove("selected"));
  }
  $("detail-close").addEventListener("click", closeDetail);

  async function loadDetail() {
    const id = state.selected;
    if (!id) return;
    const token = ++state.token;
    let ev;
    try {
      ev = await getEvaluation(id);
    } catch (err) {
      $("detail-error").textContent = err.message;
      return;
    }
    if (token !== state.token) return;
    state.shownStatus = ev.status;
    $("detail-card").dataset.evaluationId = id;
    $("detail-card").dataset.status = ev.status;
    $("detail-name").textContent = ev.experiment_name || ev.experiment_id;
    $("detail-sub").textContent = `· ${ev.subset} subset · ${ev.checkpoint} checkpoint · ${ev.total} images`;
    const pill = $("detail-status");
    pill.className = `pill ${ev.status}`;
    pill.textContent = ev.status;
    $("detail-error").textContent = ev.status === "failed" ? ev.error || "The evaluation failed." : "";
    const pending = $("detail-pending");
    if (ev.status !== "completed") {
      $("detail-body").hidden = true;
      pending.hidden = ev.status === "failed";
      pending.textContent = ev.status === "queued" ? "Waiting for a free slot on the cluster…" : `Predicting… ${ev.done} / ${ev.total} images`;
      return;
    }
    pending.hidden = true;
    $("detail-body").hidden = false;
    state.metrics = ev.metrics;
    renderHeadline(ev.metrics);
    renderPerClass();
    renderConfusion(ev.metrics);
    renderPr(ev.metrics);
    setupGalleryControls(ev.metrics);
    loadGallery(0);
  }

  function renderHeadline(m) {
    const tile = (label, value, hint) => el("div", { class: "tile" }, el("span", { class: "muted small", text: label }),
      el("b", { text: value }), hint ? el("span", { class: "muted small", text: hint }) : null);
    let tiles;
    if (m.task === "classification") {
      tiles = [
        tile("Accuracy", pct(m.accuracy), `${m.num_samples} images`),
        tile("Top-5 accuracy", m.top5 === null ? "n/a" : pct(m.top5), m.top5 === null ? "≤ 5 classes" : null),
        tile("Macro precision", f3(m.macro.precision)), tile("Macro recall", f3(m.macro.recall)), tile("Macro F1", f3(m.macro.f1)),
        tile("Weighted precision", f3(m.weighted.precision)), tile("Weighted recall", f3(m.weighted.recall)), tile("Weighted F1", f3(m.weighted.f1)),
      ];
    } else {
      tiles = [
        tile("mAP@[.5:.95]", f3(m.map), `${m.num_images} images`), tile("mAP@.5", f3(m.map50)), tile("mAP@.75", f3(m.map75)),
        tile("mAR@100", f3(m.mar100)),
      ];
    }
    $("headline").replaceChildren(...tiles);
  }

  function perClassColumns(task) {
    return task === "classification"
      ? [["name", "Class", "text"], ["precision", "Precision", "score"], ["recall", "Recall", "score"], ["f1", "F1", "score"], ["support", "Support", "int"]]
      : [["name", "Class", "text"], ["ap", "AP@[.5:.95]", "score"], ["ap50", "AP@.5", "score"], ["ap75", "AP@.75", "score"], ["num_gt", "Objects", "int"]];
  }

  function renderPerClass() {
    const m = state.metrics;
    const cols = perClassColumns(m.task);
    const { key, dir } = state.sort;
    const rows = [...m.per_class].sort((a, b) => {
      const va = a[key]; const vb = b[key];
      if (va === null || va === undefined) return vb === null || vb === undefined ? a.index - b.index : 1;
      if (vb === null || vb === undefined) return -1;
      const c = typeof va === "string" ? va.localeCompare(vb) : va - vb;
      return c ? c * dir : a.index - b.index;
    });
    const head = el("tr", {}, ...cols.map(([k, label, kind]) => {
      const sorted = k === key;
      return el("th", {
        class: `sortable ${kind === "text" ? "" : "num"} ${sorted ? (dir > 0 ? "sorted-asc" : "sorted-desc") : ""}`,
        "data-key": k, scope: "col", "aria-sort": sorted ? (dir > 0 ? "ascending" : "descending") : "none",
        title: "Sort by this column",
      }, label, el("span", { class: "sort-mark", text: sorted ? (dir > 0 ? " ▲" : " ▼") : "" }));
    }));
    const body = rows.map((c) => el("tr", { "data-name": c.name }, ...cols.map(([k, , kind]) => {
      if (kind === "text") return el("td", { class: "cls-name", text: c.name });
      if (kind === "int") return el("td", { class: "num", text: String(c[k] ?? "—") });
      const v = c[k];
      const w = v === null || v === undefined ? 0 : Math.max(0, Math.min(1, v)) * 100;
      return el("td", { class: `num bar-cell ${v === 0 ? "zero" : ""}`, "data-key": k, text: f3(v),
        style: `background-size: ${w.toFixed(1)}% 3px` });
    })));
    $("per-class").replaceChildren(el("thead", {}, head), el("tbody", {}, ...body));
  }

  $("per-class").addEventListener("click", (evt) => {
    const th = evt.target.closest("th[data-key]");
    if (!th || !state.metrics) return;
    const k = th.dataset.key;
    if (state.sort.key === k) state.sort.dir = -state.sort.dir;
    else state.sort = { key: k, dir: k === "name" ? 1 : -1 }; // numbers: best first
    renderPerClass();
  });

  function renderConfusion(m) {
    const { labels, matrix } = m.confusion_matrix;
    const detection = m.task === "detection";
    const bg = detection ? labels.length - 1 : -1;
    $("confusion-note").textContent = detection
      ? `— rows truth, columns prediction, at IoU ≥ ${m.confusion_matrix.iou_threshold} and score ≥ ${m.confusion_matrix.score_threshold}; click a cell for its images`
      : "— rows truth, columns prediction, shaded by row share; click a cell for its images";
    const head = el("tr", {}, el("th", { class: "corner", title: "rows: truth · columns: prediction" }, "truth ╲ pred"),
      ...labels.map((l, j) => el("th", { class: `col-label ${j === bg ? "bg-label" : ""}`, scope: "col", title: `predicted ${l}` }, el("span", { text: l }))),
      el("th", { class: "num total", text: "n", title: "images / objects of this truth" }));
    const body = matrix.map((row, i) => {
      const total = row.reduce((s, v) => s + v, 0);
      return el("tr", {}, el("th", { class: `row-label ${i === bg ? "bg-label" : ""}`, scope: "row", text: labels[i], title: `truth ${labels[i]}` }),
        ...row.map((count, j) => {
          if (i === bg && j === bg) return el("td", { class: "cell void", "data-t": i, "data-p": j, title: "nothing to count", text: "·" });
          const share = total ? count / total : 0;
          const rgb = i === j ? "58,91,217" : "196,61,61";
          const cell = el("td", {
            class: `cell ${i === j ? "diag" : "off"} ${count ? "has" : "empty-cell"} ${share > 0.5 ? "dark" : ""}`,
            "data-t": i, "data-p": j, "data-count": count,
            title: `truth ${labels[i]} → predicted ${labels[j]}: ${count}${total ? ` (${pct(share)} of the row)` : ""}`,
            style: count ? `background: rgba(${rgb}, ${(0.08 + 0.85 * share).toFixed(3)})` : null,
          });
          if (count) {
            cell.append(el("button", { type: "button", class: "cell-link", "aria-label": `Show the ${count} images of truth ${labels[i]}, predicted ${labels[j]}` },
              el("span", { class: "count", text: String(count) }), el("span", { class: "share", text: pct(share, 0) })));
          } else cell.append(el("span", { class: "count", text: "0" }));
          return cell;
        }),
        el("td", { class: "num total", text: String(total) }));
    });
    $("confusion").replaceChildren(el("table", { class: "heat confusion", id: "confusion-table" }, el("thead", {}, head), el("tbody", {}, ...body)));
  }

  $("confusion").addEventListener("click", (evt) => {
    const cell = evt.target.closest("td.cell.has");
    if (!cell) return;
    state.gallery = { kind: "all", label: "", cell: `${cell.dataset.t},${cell.dataset.p}` };
    syncGalleryControls();
    loadGallery(0);
    $("gallery").closest(".gallery-section").scrollIntoView({ behavior: "smooth", block: "start" });
  });

  function renderPr(m) {
    if (state.prChart) { state.prChart.destroy(); state.prChart = null; }
    const section = $("pr-section");
    if (m.task !== "detection" || !m.pr_curves) { section.hidden = true; return; }
    section.hidden = false;
    const curves = m.pr_curves.filter((c) => c.precision.length);
    $("pr-note").textContent = curves.length ? `— at IoU ${curves[0].iou}, one line per class` : "— no ground truth in this subset";
    state.prChart = new Chart($("pr-chart"), {
      type: "line",
      data: {
        datasets: curves.map((c, k) => {
          const color = PALETTE[k % PALETTE.length];
          return {
            label: c.name, borderColor: color, backgroundColor: color, pointRadius: 2, borderWidth: 2, stepped: false,
            data: c.recall.map((r, i) => ({ x: r, y: c.precision[i] < 0 ? null : c.precision[i] })),
          };
        }),
      },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false, spanGaps: false,
        plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: P ${f3(ctx.parsed.y)} at R ${f3(ctx.parsed.x)}` } } },
        scales: {
          x: { type: "linear", min: 0, max: 1, title: { display: true, text: "recall" } },
          y: { min: 0, max: 1.02, title: { display: true, text: "precision" }, ticks: { maxTicksLimit: 6 } },
        },
      },
    });
  }

  // ------------------------------------------------------------------ gallery
  function setupGalleryControls(m) {
    const select = $("gallery-label");
    const names = m.per_class.map((c) => c.name);
    select.replaceChildren(el("option", { value: "", text: "any" }), ...names.map((n) => el("option", { value: n, text: n })));
    syncGalleryControls();
  }

  function syncGalleryControls() {
    const g = state.gallery;
    $("gallery-kind").value = g.kind;
    $("gallery-label").value = g.label;
    const chip = $("cell-chip");
    chip.hidden = !g.cell;
    if (g.cell) {
      const [t, p] = g.cell.split(",").map(Number);
      $("cell-chip-text").textContent = `truth ${className(t)} → predicted ${className(p)}`;
    }
    document.querySelectorAll("#confusion-table td.cell").forEach((c) =>
      c.classList.toggle("active", `${c.dataset.t},${c.dataset.p}` === g.cell));
  }

  function galleryUrl(offset) {
    const g = state.gallery;
    const q = new URLSearchParams({ kind: g.kind, offset: String(offset), limit: "24" });
    if (g.label) q.set("label", g.label);
    if (g.cell) q.set("cell", g.cell);
    return `/api/evaluation/${pid}/${state.selected}/samples?${q}`;
  }

  function loadGallery(offset) {
    if (!state.selected) return;
    $("gallery-note").textContent = state.metrics?.task === "detection"
      ? "— truth in green, predictions in red (dashed)" : "— truth → prediction, with the prediction's confidence";
    htmx.ajax("GET", galleryUrl(offset), { target: "#gallery", swap: "innerHTML" });
  }

  $("gallery-kind").addEventListener("change", (evt) => { state.gallery.kind = evt.target.value; loadGallery(0); });
  $("gallery-label").addEventListener("change", (evt) => {
    state.gallery.label = evt.target.value;
    state.gallery.cell = "";
    syncGalleryControls();
    loadGallery(0);
  });
  $("cell-clear").addEventListener("click", () => {
    state.gallery = { kind: "errors", label: "", cell: "" };
    syncGalleryControls();
    loadGallery(0);
  });

  function decorateGallery() {
    const minScore = scoreThreshold();
    document.querySelectorAll("#gallery .sample.det").forEach(async (fig) => {
      try {
        const gt = JSON.parse(fig.dataset.gt);
        const pred = JSON.parse(fig.dataset.pred);
        const { width, height } = await imageSize(fig.dataset.imageId);
        drawBoxes(fig.querySelector("svg.boxes"), width, height, detectionLayers(gt, pred, minScore), false);
        fig.dataset.drawn = "true";
      } catch (_) { /* the image is gone; leave the bare thumbnail */ }
    });
  }

  // A larger view of one sample: full image, boxes with labels, top predictions.
  $("gallery").addEventListener("click", (evt) => {
    const fig = evt.target.closest(".sample");
    if (fig) openSample(fig);
  });
  $("gallery").addEventListener("keydown", (evt) => {
    const fig = evt.target.closest(".sample");
    if (fig && (evt.key === "Enter" || evt.key === " ")) { evt.preventDefault(); openSample(fig); }
  });

  async function openSample(fig) {
    const modal = $("sample-modal");
    const img = $("sample-image");
    const svg = $("sample-boxes");
    svg.replaceChildren();
    img.src = fig.dataset.url;
    $("sample-title").textContent = fig.getAttribute("title") || "";
    const info = $("sample-info");
    info.replaceChildren();
    modal.hidden = false;
    if (fig.classList.contains("det")) {
      const gt = JSON.parse(fig.dataset.gt);
      const pred = JSON.parse(fig.dataset.pred);
      const minScore = scoreThreshold();
      info.append(el("p", { class: "small" }, el("span", { class: "legend gt", text: "truth" }), " ",
        el("span", { class: "legend pred", text: `prediction (score ≥ ${minScore})` }), " ",
        fig.querySelector("figcaption").textContent.trim()));
      try {
        const { width, height } = await imageSize(fig.dataset.imageId);
        drawBoxes(svg, width, height, detectionLayers(gt, pred, minScore), true);
      } catch (_) { /* no boxes without the size */ }
    } else {
      const top = JSON.parse(fig.dataset.top);
      info.append(el("p", {}, "Truth ", el("b", { text: fig.dataset.trueName })), bars(top.map((t) => [t.name, t.score]), fig.dataset.trueName));
    }
  }
  const closeModal = () => { $("sample-modal").hidden = true; $("sample-image").removeAttribute("src"); };
  $("sample-close").addEventListener("click", closeModal);
  $("sample-modal").addEventListener("click", (evt) => { if (evt.target.id === "sample-modal") closeModal(); });
  document.addEventListener("keydown", (evt) => { if (evt.key === "Escape" && !$("sample-modal").hidden) closeModal(); });

  function bars(pairs, highlight) {
    return el("div", { class: "bars" }, ...pairs.map(([name, score], k) => el("div", { class: `bar-row ${k === 0 ? "top" : ""} ${name === highlight ? "truth" : ""}` },
      el("span", { class: "bar-name", text: name, title: name }),
      el("span", { class: "bar" }, el("span", { style: `width: ${(100 * score).toFixed(1)}%` })),
      el("span", { class: "num bar-value", text: pct(score) }))));
  }

  // ------------------------------------------------------------------ try one image
  const tryState = { result: null, objectUrl: null };

  function tryClasses() {
    const opt = $("try-experiment").selectedOptions[0];
    try { return opt ? JSON.parse(opt.dataset.classes) : []; } catch (_) { return []; }
  }

  async function predict(form, imageSrc) {
    const submit = $("try-submit");
    const pick = $("try-pick");
    submit.disabled = pick.disabled = true;
    const label = submit.textContent;
    submit.textContent = "Predicting…";
    try {
      const result = await call("POST", `/api/evaluation/${pid}/predict`, form, $("try-error"));
      tryState.result = result;
      renderTry(result, imageSrc);
      return true;
    } catch (_) { return false; /* shown in #try-error */ } finally {
      submit.disabled = pick.disabled = false;
      submit.textContent = label;
    }
  }

  $("try-form").addEventListener("submit", (evt) => {
    evt.preventDefault();
    const file = $("try-file").files[0];
    if (!file) { $("try-error").textContent = "file: choose an image to upload first (or pick a dataset image)"; return; }
    const form = new FormData();
    form.append("experiment_id", $("try-experiment").value);
    form.append("checkpoint", $("try-checkpoint").value);
    form.append("file", file);
    if (tryState.objectUrl) URL.revokeObjectURL(tryState.objectUrl);
    tryState.objectUrl = URL.createObjectURL(file);
    predict(form, tryState.objectUrl);
  });

  $("try-pick").addEventListener("click", async () => {
    const errorBox = $("try-error");
    try {
      const first = await call("GET", `/api/datasets/${pid}/images?limit=1`, null, errorBox);
      if (!first.total) { errorBox.textContent = "This project has no images yet."; return; }
      const offset = Math.floor(Math.random() * first.total);
      const page = offset ? await call("GET", `/api/datasets/${pid}/images?offset=${offset}&limit=1`, null, errorBox) : first;
      const image = page.items[0];
      const form = new FormData();
      form.append("experiment_id", $("try-experiment").value);
      form.append("checkpoint", $("try-checkpoint").value);
      form.append("image_id", image.id);
      if (await predict(form, image.url)) {
        $("try-meta").textContent += ` · dataset image ${image.original_name || image.filename}${image.label ? ` (truth: ${image.label})` : ""}`;
      }
    } catch (_) { /* shown */ }
  });

  $("try-threshold").addEventListener("input", () => {
    $("try-threshold-value").textContent = Number($("try-threshold").value).toFixed(2);
    if (tryState.result) renderTry(tryState.result, null);
  });

  function renderTry(r, imageSrc) {
    $("try-result").hidden = false;
    const img = $("try-image");
    if (imageSrc) img.src = imageSrc;
    const svg = $("try-boxes");
    svg.setAttribute("viewBox", `0 0 ${r.width} ${r.height}`);
    const badge = $("try-badge");
    const summary = $("try-summary");
    $("try-meta").textContent = `${r.width} × ${r.height} px · ${r.checkpoint} checkpoint`;
    if (Array.isArray(r.probs)) { // classification
      $("try-threshold-label").hidden = true;
      svg.replaceChildren();
      const names = tryClasses();
      const pairs = r.probs.map((p, i) => [names[i] ?? `class ${i}`, p]).sort((a, b) => b[1] - a[1]).slice(0, 10);
      const conf = r.probs[r.label];
      badge.hidden = false;
      badge.textContent = `${r.class_name} · ${pct(conf)}`;
      summary.replaceChildren(el("div", { class: "muted small", text: "Predicted class" }),
        el("div", { class: "top-class", id: "try-class", text: r.class_name }),
        el("div", { class: "muted small", text: `${pct(conf)} confidence` }));
      $("try-bars").replaceChildren(el("h3", { text: names.length > 10 ? "Top 10 classes" : "All classes" }), bars(pairs));
      return;
    }
    // detection
    badge.hidden = true;
    $("try-threshold-label").hidden = false;
    const minScore = Number($("try-threshold").value);
    const keep = r.scores.map((s, i) => (s >= minScore ? i : -1)).filter((i) => i >= 0);
    const labels = keep.map((i) => `${r.class_names[i]} ${(100 * r.scores[i]).toFixed(0)}%`);
    drawBoxes(svg, r.width, r.height, [{ boxes: keep.map((i) => r.boxes[i]), color: PRED_COLOR, labels }], true);
    summary.replaceChildren(el("div", { class: "muted small", text: "Detections" }),
      el("div", { class: "top-class", id: "try-class", text: keep.length ? `${keep.length} object${keep.length === 1 ? "" : "s"}` : "nothing found" }),
      el("div", { class: "muted small", text: `${r.scores.length} candidates, ${keep.length} with score ≥ ${minScore.toFixed(2)}` }));
    $("try-bars").replaceChildren(bars(keep.map((i) => [r.class_names[i], r.scores[i]])));
  }

  // ------------------------------------------------------------------ public hooks
  window.evaluationPage = {
    started(xhr) {
      let id = null;
      try { id = JSON.parse(xhr.responseText).data.id; } catch (_) { /* no id */ }
      refreshList();
      if (id) select(id);
    },
  };
  applyListState();
})();
