// The error gallery (a server-rendered fragment): its filters, the boxes drawn over detection
// tiles, and the larger view of one sample.
import { $, drawBoxes, el } from "../common.js";
import { bars, className, detectionLayers, imageSize, pid, scoreThreshold, state } from "./context.js";

export function setupGalleryControls(m) {
  const select = $("gallery-label");
  const names = m.per_class.map((c) => c.name);
  select.replaceChildren(el("option", { value: "", text: "any" }), ...names.map((n) => el("option", { value: n, text: n })));
  syncGalleryControls();
}

export function syncGalleryControls() {
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

export function loadGallery(offset) {
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

export function decorateGallery() {
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
