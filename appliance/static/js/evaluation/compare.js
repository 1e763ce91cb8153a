// The comparison panel: two completed evaluations side by side (headline and per-class metrics,
// with B − A deltas).
import { $, el, f3 } from "../common.js";
import { getEvaluation, state } from "./context.js";

let compareShown = null; // the pair the panel shows, as "idA,idB"

export async function renderCompare() {
  const panel = $("compare-panel");
  const key = state.compare.join();
  if (key === compareShown) return;
  compareShown = key;
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
  } catch (_) { compareShown = null; return; }
  if (ids.join() !== state.compare.join()) return; // changed meanwhile
  $("compare-title").textContent = "Comparison";
  const ma = a.metrics; const mb = b.metrics;
  if (!ma || !mb || ma.task !== mb.task) {
    $("compare-body").replaceChildren(el("p", { class: "warn", text: "These two evaluations are not of the same task." }));
    return;
  }
  $("compare-body").replaceChildren(compareTable(a, b));
}

function compareTable(a, b) {
  const ma = a.metrics; const mb = b.metrics;
  const rows = [];
  const section = (text) => rows.push(el("tr", { class: "group" }, el("th", { colspan: 4, text })));
  const line = (name, va, vb) => {
    const d = va === null || va === undefined || vb === null || vb === undefined ? null : vb - va;
    const cls = d === null || Math.abs(d) < 0.0005 ? "delta same" : d > 0 ? "delta up" : "delta down";
    const dText = d === null ? "—" : Math.abs(d) < 0.0005 ? "±0.000" : `${d > 0 ? "+" : "−"}${Math.abs(d).toFixed(3)}`;
    rows.push(el("tr", {}, el("td", { text: name }), el("td", { class: "num", text: f3(va) }), el("td", { class: "num", text: f3(vb) }),
      el("td", { class: `num ${cls}`, text: dText })));
  };
  section("Headline");
  if (ma.task === "classification") {
    line("Accuracy", ma.accuracy, mb.accuracy);
    if (ma.top5 !== null || mb.top5 !== null) line("Top-5 accuracy", ma.top5, mb.top5);
    for (const avg of ["macro", "weighted"]) for (const k of ["precision", "recall", "f1"]) {
      line(`${avg[0].toUpperCase()}${avg.slice(1)} ${k === "f1" ? "F1" : k}`, ma[avg][k], mb[avg][k]);
    }
  } else {
    line("mAP@[.5:.95]", ma.map, mb.map);
    line("mAP@.5", ma.map50, mb.map50);
    line("mAP@.75", ma.map75, mb.map75);
  }
  const field = ma.task === "classification" ? "f1" : "ap";
  section(ma.task === "classification" ? "Per-class F1" : "Per-class AP@[.5:.95]");
  const perA = new Map(ma.per_class.map((c) => [c.name, c]));
  const perB = new Map(mb.per_class.map((c) => [c.name, c]));
  const names = [...perA.keys(), ...[...perB.keys()].filter((n) => !perA.has(n))];
  for (const n of names) line(n, perA.get(n)?.[field], perB.get(n)?.[field]);
  const label = (e) => `${e.experiment_name} · ${e.subset} · ${e.checkpoint}`;
  return el("table", { class: "table compact compare-table", id: "compare-table" },
    el("thead", {}, el("tr", {}, el("th", { text: "Metric" }),
      el("th", { class: "num", title: a.id }, el("span", { class: "tag-a", text: "A" }), ` ${label(a)}`),
      el("th", { class: "num", title: b.id }, el("span", { class: "tag-b", text: "B" }), ` ${label(b)}`),
      el("th", { class: "num", text: "Δ (B − A)" }))),
    el("tbody", {}, ...rows));
}
