// Precision-recall curves of a detection evaluation, one line per class (Chart.js).
import { $, f3 } from "../common.js";

const PALETTE = ["#3a5bd9", "#e39b2d", "#2e9d5b", "#c43d3d", "#8b5cf6", "#0ea5e9", "#d946ef", "#84cc16", "#f97316", "#64748b"];
let prChart = null;

export function renderPr(m) {
  if (prChart) { prChart.destroy(); prChart = null; }
  const section = $("pr-section");
  if (m.task !== "detection" || !m.pr_curves) { section.hidden = true; return; }
  section.hidden = false;
  const curves = m.pr_curves.filter((c) => c.precision.length);
  $("pr-note").textContent = curves.length ? `— at IoU ${curves[0].iou}, one line per class` : "— no ground truth in this subset";
  prChart = new Chart($("pr-chart"), {
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
