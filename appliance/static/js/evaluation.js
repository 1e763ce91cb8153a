// Evaluation page, one module per concern (each wires its own listeners when imported):
//   evaluation/list.js     the evaluations list (select, delete, compare ticks)
//   evaluation/compare.js  two evaluations side by side
//   evaluation/detail.js   one evaluation: status, headline tiles, and the parts below
//   evaluation/metrics.js  the sortable per-class table and the confusion heatmap
//   evaluation/pr.js       precision-recall curves (detection)
//   evaluation/gallery.js  the error gallery and the larger view of one sample
//   evaluation/try.js      "try one image"
//   evaluation/context.js  the page state and look-ups they share
// The list and the gallery are server-rendered htmx fragments; this re-applies state after a swap.
import { decorateGallery } from "./evaluation/gallery.js";
import { applyListState, refreshList } from "./evaluation/list.js";
import { select } from "./evaluation/detail.js";
import "./evaluation/try.js";

document.body.addEventListener("htmx:afterSwap", (evt) => {
  const target = evt.detail.target;
  if (target.id === "evaluation-list") applyListState();
  else if (target.id === "gallery") decorateGallery();
});

// Called by the run form (hx-on::after-request in evaluation.html) once an evaluation is queued.
window.evaluationPage = {
  started(xhr) {
    let id = null;
    try { id = JSON.parse(xhr.responseText).data.id; } catch (_) { /* no id */ }
    refreshList();
    if (id) select(id);
  },
};
applyListState();
// `?evaluation=<id>` (kept in the URL by the detail card) reopens that evaluation.
const wanted = new URLSearchParams(location.search).get("evaluation");
if (wanted && [...document.querySelectorAll("#evaluations-table tr.eval-row")].some((r) => r.dataset.evaluationId === wanted)) select(wanted);
