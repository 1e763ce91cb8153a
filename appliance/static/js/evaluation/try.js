// "Try one image": upload an image or pick a random dataset image, show the prediction (class
// bars, or boxes with a score slider).
import { $, api, drawBoxes, el, keptIndices, pct, PRED_COLOR, scoredLabel } from "../common.js";
import { bars, pid } from "./context.js";

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
    const result = await api("POST", `/api/evaluation/${pid}/predict`, form, $("try-error"));
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
    const first = await api("GET", `/api/datasets/${pid}/images?limit=1`, null, errorBox);
    if (!first.total) { errorBox.textContent = "This project has no images yet."; return; }
    const offset = Math.floor(Math.random() * first.total);
    const page = offset ? await api("GET", `/api/datasets/${pid}/images?offset=${offset}&limit=1`, null, errorBox) : first;
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
  const keep = keptIndices(r.scores, minScore);
  const labels = keep.map((i) => scoredLabel(r.class_names[i], r.scores[i]));
  drawBoxes(svg, r.width, r.height, [{ boxes: keep.map((i) => r.boxes[i]), color: PRED_COLOR, labels }], true);
  summary.replaceChildren(el("div", { class: "muted small", text: "Detections" }),
    el("div", { class: "top-class", id: "try-class", text: keep.length ? `${keep.length} object${keep.length === 1 ? "" : "s"}` : "nothing found" }),
    el("div", { class: "muted small", text: `${r.scores.length} candidates, ${keep.length} with score ≥ ${minScore.toFixed(2)}` }));
  $("try-bars").replaceChildren(bars(keep.map((i) => [r.class_names[i], r.scores[i]])));
}
