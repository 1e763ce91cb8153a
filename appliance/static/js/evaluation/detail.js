// One evaluation's detail card: its status while it runs, then the headline tiles, the per-class
// table, the confusion heatmap, the PR curves and the error gallery.
import { $, el, f3, pct } from "../common.js";
import { getEvaluation, state } from "./context.js";
import { loadGallery, setupGalleryControls } from "./gallery.js";
import { renderConfusion, renderPerClass } from "./metrics.js";
import { renderPr } from "./pr.js";

let token = 0; // the latest loadDetail; an older one that resolves later draws nothing

export function select(id) {
  if (state.selected !== id) {
    state.gallery = { kind: "errors", label: "", cell: "" };
    state.sort = { key: "index", dir: 1 };
  }
  state.selected = id;
  state.shownStatus = null;
  document.querySelectorAll("#evaluations-table tr.eval-row").forEach((r) => r.classList.toggle("selected", r.dataset.evaluationId === id));
  $("detail-card").hidden = false;
  setUrlEvaluation(id);
  loadDetail().then(() => $("detail-card").scrollIntoView({ behavior: "smooth", block: "start" }));
}

export function closeDetail() {
  state.selected = null;
  state.shownStatus = null;
  state.metrics = null;
  $("detail-card").hidden = true;
  document.querySelectorAll("#evaluations-table tr.eval-row.selected").forEach((r) => r.classList.remove("selected"));
  setUrlEvaluation(null);
}

// The open evaluation lives in the URL (`?evaluation=…`), so reload and Back reopen it.
function setUrlEvaluation(id) {
  const q = new URLSearchParams(location.search);
  if (id) q.set("evaluation", id); else q.delete("evaluation");
  const url = location.pathname + (q.size ? `?${q}` : "") + location.hash;
  if (url !== location.pathname + location.search + location.hash) history.replaceState(history.state, "", url);
}
$("detail-close").addEventListener("click", closeDetail);

export async function loadDetail() {
  const id = state.selected;
  if (!id) return;
  const mine = ++token;
  let ev;
  try {
    ev = await getEvaluation(id);
  } catch (err) {
    $("detail-error").textContent = err.message;
    return;
  }
  if (mine !== token) return;
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
  renderHeadline(ev.metrics, ev);
  renderPerClass();
  renderConfusion(ev.metrics);
  renderPr(ev.metrics);
  setupGalleryControls(ev.metrics);
  loadGallery(0);
}

function renderHeadline(m, ev) {
  const tile = (label, value, hint) => el("div", { class: "tile" }, el("span", { class: "muted small", text: label }),
    el("b", { text: value }), hint ? el("span", { class: "muted small", text: hint }) : null);
  let tiles;
  if (m.task === "classification") {
    tiles = [
      tile("Accuracy", pct(m.accuracy), `${m.num_samples} images`),
      ...baselineTiles(ev),
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
  if (ev.beats_baseline === false) tiles[0].classList.add("below-baseline"); // the accuracy tile
  const flag = ev.beats_baseline === false
    ? el("div", { class: "baseline-flag", id: "baseline-flag", role: "status", text: `⚠ ${ev.baseline_warning}` }) : null;
  $("headline").replaceChildren(...(flag ? [flag] : []), ...tiles);
}

// Issue #13: the accuracy of always answering the most frequent class, and a flag when not beaten.
function baselineTiles(ev) {
  const b = ev.majority_baseline;
  if (!b) return [];
  const tile = el("div", { class: "tile baseline-tile", id: "baseline-tile" },
    el("span", { class: "muted small", text: "Majority baseline" }), el("b", { text: pct(b.share) }),
    el("span", { class: "muted small", text: `always “${b.class_name}” (${b.count} / ${b.total})` }));
  return [tile];
}
