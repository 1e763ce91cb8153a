// Dataset page: import mode toggle, upload progress, charts, grid filters, the image view.
// Works with htmx fragments: import_status.html, dataset_summary.html, image_grid.html.
import { $, announce, api, el } from "./common.js";

const page = $("dataset-page");
const projectId = page.dataset.projectId;

// ------------------------------------------------------------------ import: path / ZIP toggle
const tabs = page.querySelectorAll(".seg-toggle [data-mode]");
tabs.forEach((tab) => tab.addEventListener("click", () => {
  tabs.forEach((t) => { t.classList.toggle("active", t === tab); t.setAttribute("aria-selected", t === tab); });
  page.querySelectorAll("form.import-form").forEach((f) => { f.hidden = f.dataset.mode !== tab.dataset.mode; });
  const box = $("import-error");
  if (box) box.textContent = "";
}));

// Upload progress of the ZIP itself (before the import job exists).
const uploadForm = $("import-upload-form");
const uploadBar = uploadForm.querySelector(".upload-progress");
uploadForm.addEventListener("htmx:xhr:progress", (evt) => {
  if (!evt.detail.lengthComputable) return;
  uploadBar.hidden = false;
  uploadBar.firstElementChild.style.width = `${(100 * evt.detail.loaded / evt.detail.total).toFixed(1)}%`;
});
uploadForm.addEventListener("htmx:afterRequest", (evt) => {
  uploadBar.hidden = true;
  if (evt.detail.successful) uploadForm.reset();
});

// ------------------------------------------------------------------ refresh after an import ends
// A finished job fragment carries data-announce; announce it once so summary + grid reload.
function announceFinishedImport() {
  const job = document.querySelector("#import-job[data-announce]");
  if (!job) return;
  job.removeAttribute("data-announce");
  if (job.dataset.status === "completed") announce("dataset-changed");
}

// ------------------------------------------------------------------ charts
function renderCharts(root) {
  if (typeof Chart === "undefined") return;
  (root || document).querySelectorAll("canvas[data-chart]").forEach((canvas) => {
    const existing = Chart.getChart(canvas);
    if (existing) existing.destroy();
    new Chart(canvas, JSON.parse(canvas.dataset.chart));
  });
}

// ------------------------------------------------------------------ grid filters
const filter = $("grid-filter");
const splitSelect = $("filter-split");
const subsetSelect = $("filter-subset");
const labelSelect = $("filter-label");
splitSelect.addEventListener("change", () => {
  subsetSelect.disabled = !splitSelect.value;
  if (!splitSelect.value) subsetSelect.value = "";
});
// Empty filters are left out of the query (`subset=` would not validate).
document.body.addEventListener("htmx:configRequest", (evt) => {
  if (evt.detail.verb !== "get" || !evt.detail.path.startsWith("/api/datasets/")) return;
  const params = evt.detail.parameters;
  for (const key of ["label", "split_id", "subset", "issue"]) {
    const value = params instanceof FormData ? params.get(key) : params[key];
    if (value === "" || value === null) {
      if (params instanceof FormData) params.delete(key); else delete params[key];
    }
  }
});
// New classes after an import: rebuild the class filter from the summary, keeping the choice.
async function refreshClassFilter() {
  const res = await fetch(`/api/datasets/${projectId}`);
  if (!res.ok) return;
  const summary = (await res.json()).data;
  const current = labelSelect.value;
  labelSelect.replaceChildren(new Option("All classes", ""));
  for (const c of summary.classes) labelSelect.add(new Option(`${c.name} (${c.images})`, c.name));
  labelSelect.value = summary.classes.some((c) => c.name === current) ? current : "";
}
document.body.addEventListener("dataset-changed", refreshClassFilter);
// The grid's filter, its page and the open image live in the URL
// (`?label=…&split_id=…&subset=…&issue=…&cursor=…|offset=…&image=…`), so reload and Back keep them; the
// split page's Browse link and the health summary's links use the same query to preselect a filter.
const issueSelect = $("filter-issue");
function syncUrl() {
  const q = new URLSearchParams();
  if (labelSelect.value) q.set("label", labelSelect.value);
  if (issueSelect.value) q.set("issue", issueSelect.value);
  if (splitSelect.value) q.set("split_id", splitSelect.value);
  if (splitSelect.value && subsetSelect.value) q.set("subset", subsetSelect.value);
  const gridPage = document.querySelector("#image-grid .grid-page");
  const offset = Number(gridPage?.dataset.offset || 0);
  if (gridPage?.dataset.cursor) q.set("cursor", gridPage.dataset.cursor);  // keyset page (issue #14)
  else if (offset > 0) q.set("offset", String(offset));
  if (shown) q.set("image", shown.id);
  const url = location.pathname + (q.size ? `?${q}` : "");
  if (url !== location.pathname + location.search) history.replaceState(history.state, "", url);
}
const hasOption = (select, value) => [...select.options].some((o) => o.value === value);
function restoreFromUrl() {
  const query = new URLSearchParams(location.search);
  let changed = false;
  if (query.get("label") && hasOption(labelSelect, query.get("label"))) { labelSelect.value = query.get("label"); changed = true; }
  if (query.get("issue") && hasOption(issueSelect, query.get("issue"))) { issueSelect.value = query.get("issue"); changed = true; }
  if (query.get("split_id") && hasOption(splitSelect, query.get("split_id"))) {
    splitSelect.value = query.get("split_id");
    subsetSelect.disabled = false;
    if (query.get("subset") && hasOption(subsetSelect, query.get("subset"))) subsetSelect.value = query.get("subset");
    changed = true;
  }
  const offset = Number.parseInt(query.get("offset") || "0", 10);
  const cursor = query.get("cursor");
  if (changed || offset > 0 || cursor) {
    // Empty filters are left out, as for htmx's own requests (`issue=` would not validate).
    const params = new URLSearchParams([...new FormData(filter)].filter(([, value]) => value !== ""));
    if (cursor) params.set("cursor", cursor);
    else if (offset > 0) params.set("offset", String(offset));
    htmx.ajax("GET", `/api/datasets/${projectId}/images?${params}`, { target: "#image-grid", swap: "innerHTML" });
  }
  const imageId = query.get("image");
  if (imageId) {
    fetch(`/api/datasets/${projectId}/images/${encodeURIComponent(imageId)}`)
      .then((res) => (res.ok ? res.json() : null))
      .then((body) => { if (body && body.data) openImage(body.data); else syncUrl(); })
      .catch(() => syncUrl());
  }
}

// ------------------------------------------------------------------ image view
const modal = $("image-modal");
const viewerImg = $("viewer-img");
const boxesLayer = $("viewer-boxes");
let shown = null;

function colourFor(label) {
  let h = 0;
  for (const ch of String(label)) h = (h * 31 + ch.codePointAt(0)) % 360;
  return `hsl(${h}, 85%, 50%)`;
}

function fmtBox(b) {
  return [b.x1, b.y1, b.x2, b.y2].map((v) => Math.round(v)).join(", ");
}

function openImage(image) {
  shown = image;
  $("viewer-title").textContent = image.original_name;
  viewerImg.src = image.url;
  viewerImg.alt = image.original_name;
  // Boxes in % of the image's pixel size: the overlay covers the displayed image exactly,
  // so they stay aligned at any displayed size.
  boxesLayer.replaceChildren(...image.boxes.map((b) => {
    const colour = colourFor(b.label);
    const tag = el("span", { class: "box-label", text: b.difficult ? `${b.label} (difficult)` : b.label });
    tag.style.background = colour;
    const box = el("div", { class: b.difficult ? "box difficult" : "box", "data-label": b.label }, tag);
    Object.assign(box.style, {
      left: `${(100 * b.x1) / image.width}%`, top: `${(100 * b.y1) / image.height}%`,
      width: `${(100 * (b.x2 - b.x1)) / image.width}%`, height: `${(100 * (b.y2 - b.y1)) / image.height}%`,
      borderColor: colour,
    });
    return box;
  }));
  const meta = $("viewer-meta");
  const rows = [
    ["Size", `${image.width} × ${image.height} px, ${(image.size_bytes / 1024).toFixed(1)} KiB`],
    ["Label", image.label || (image.boxes.length ? "—" : "none")],
    ["Boxes", image.boxes.length ? image.boxes.map((b) => `${b.label}${b.difficult ? " (difficult)" : ""} [${fmtBox(b)}]`).join("; ") : "none"],
    ["Subset in source", image.subset_hint || "—"],
    ["Id", image.id],
  ];
  meta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  modal.hidden = false;
  $("viewer-close").focus();
  syncUrl();
}

function closeImage() {
  modal.hidden = true;
  viewerImg.removeAttribute("src");
  shown = null;
  syncUrl();
}

$("image-grid").addEventListener("click", (evt) => {
  const thumb = evt.target.closest(".thumb[data-image]");
  if (thumb) openImage(JSON.parse(thumb.dataset.image));
});
$("viewer-close").addEventListener("click", closeImage);
modal.addEventListener("click", (evt) => { if (evt.target === modal) closeImage(); });
document.addEventListener("keydown", (evt) => { if (evt.key === "Escape" && !modal.hidden) closeImage(); });
$("viewer-delete").addEventListener("click", async () => {
  if (!shown || !confirm(`Delete ${shown.original_name} from the dataset?`)) return;
  await api("DELETE", `/api/datasets/${projectId}/images/${shown.id}`);
  closeImage();
  announce("dataset-changed");
});

// Thumbnail boxes take their class's colour, as in the image view.
function colourThumbBoxes(root) {
  (root || document).querySelectorAll(".thumb-boxes rect[data-label]").forEach((r) => { r.style.stroke = colourFor(r.dataset.label); });
}

// ------------------------------------------------------------------ wiring
document.body.addEventListener("htmx:afterSettle", (evt) => {
  announceFinishedImport();
  renderCharts(evt.detail.target);
  colourThumbBoxes(evt.detail.target);
  if (evt.detail.target.id === "image-grid") syncUrl();
});
renderCharts(document);
colourThumbBoxes(document);
restoreFromUrl();
