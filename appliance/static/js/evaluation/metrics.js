// The per-class table (sortable) and the confusion heatmap of the shown evaluation; a heatmap
// cell filters the error gallery to its images.
import { $, el, f3, pct } from "../common.js";
import { state } from "./context.js";
import { loadGallery, syncGalleryControls } from "./gallery.js";

function perClassColumns(task) {
  return task === "classification"
    ? [["name", "Class", "text"], ["precision", "Precision", "score"], ["recall", "Recall", "score"], ["f1", "F1", "score"], ["support", "Support", "int"]]
    : [["name", "Class", "text"], ["ap", "AP@[.5:.95]", "score"], ["ap50", "AP@.5", "score"], ["ap75", "AP@.75", "score"], ["num_gt", "Objects", "int"]];
}

export function renderPerClass() {
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

export function renderConfusion(m) {
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
  fitConfusion();
}

// A matrix wider than its half of the card takes the card's whole width (per-class table above);
// one wider still scrolls inside the card.
function fitConfusion() {
  const box = $("confusion");
  const grid = box.closest(".detail-grid");
  const table = $("confusion-table");
  if (!grid || !table) return;
  grid.classList.remove("stacked");
  if (box.clientWidth && table.scrollWidth > box.clientWidth) grid.classList.add("stacked");
}
window.addEventListener("resize", fitConfusion);

$("confusion").addEventListener("click", (evt) => {
  const cell = evt.target.closest("td.cell.has");
  if (!cell) return;
  state.gallery = { kind: "all", label: "", cell: `${cell.dataset.t},${cell.dataset.p}` };
  syncGalleryControls();
  loadGallery(0);
  $("gallery").closest(".gallery-section").scrollIntoView({ behavior: "smooth", block: "start" });
});
