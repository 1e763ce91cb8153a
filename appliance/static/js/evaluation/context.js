// What the evaluation page's parts share: the project, the page state, cached look-ups and the
// small views used by more than one part (detection box layers, score bars).
import { $, api, el, GT_COLOR, keptIndices, pct, PRED_COLOR, scoredLabel } from "../common.js";

export const pid = $("evaluation-page").dataset.projectId;

export const state = {
  selected: null,       // evaluation id shown in the detail card
  shownStatus: null,    // its status when the detail was last drawn
  metrics: null,        // its metrics (completed only)
  sort: { key: "index", dir: 1 },
  gallery: { kind: "errors", label: "", cell: "" },
  compare: [],          // up to two evaluation ids, in the order they were ticked
};

const completedCache = new Map(); // evaluation id -> public record with metrics (completed ones never change)
const imageSizes = new Map();     // image id -> Promise<{width, height}>

export async function getEvaluation(id) {
  if (completedCache.has(id)) return completedCache.get(id);
  const ev = await api("GET", `/api/evaluation/${pid}/${id}`);
  if (ev.status === "completed") completedCache.set(id, ev);
  return ev;
}

export function forgetEvaluation(id) {
  completedCache.delete(id);
}

export function imageSize(imageId) {
  if (!imageSizes.has(imageId)) {
    imageSizes.set(imageId, api("GET", `/api/datasets/${pid}/images/${imageId}`)
      .then((img) => ({ width: img.width, height: img.height }))
      .catch((err) => { imageSizes.delete(imageId); throw err; }));
  }
  return imageSizes.get(imageId);
}

export function className(index) {
  const labels = state.metrics?.confusion_matrix?.labels || [];
  return labels[index] ?? `class ${index}`;
}

export const scoreThreshold = () => state.metrics?.confusion_matrix?.score_threshold ?? 0.25;

// Truth (solid green; difficult boxes labelled as ignored) and the predictions scored at least `minScore` (dashed red) of one image.
export function detectionLayers(gt, pred, minScore) {
  const keep = keptIndices(pred.scores || [], minScore);
  return [
    // a difficult box (VOC) is neither a hit nor a miss: say so rather than count it
    { boxes: gt.boxes || [], color: GT_COLOR,
      labels: (gt.labels || []).map((l, k) => `${className(l)} (${gt.difficult?.[k] ? "difficult, ignored" : "truth"})`) },
    { boxes: keep.map((i) => pred.boxes[i]), color: PRED_COLOR, dashed: true,
      labels: keep.map((i) => scoredLabel(className(pred.labels[i]), pred.scores[i])) },
  ];
}

// Horizontal score bars, [[name, score], …] best first; `highlight` marks the true class.
export function bars(pairs, highlight) {
  return el("div", { class: "bars" }, ...pairs.map(([name, score], k) => el("div", { class: `bar-row ${k === 0 ? "top" : ""} ${name === highlight ? "truth" : ""}` },
    el("span", { class: "bar-name", text: name, title: name }),
    el("span", { class: "bar" }, el("span", { style: `width: ${(100 * score).toFixed(1)}%` })),
    el("span", { class: "num bar-value", text: pct(score) }))));
}
