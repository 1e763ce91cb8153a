// The evaluations list (a server-rendered fragment): the selected row, Delete, and the two
// "compare" ticks.
import { $, announce, api, isActive } from "../common.js";
import { renderCompare } from "./compare.js";
import { forgetEvaluation, pid, state } from "./context.js";
import { closeDetail, loadDetail, select } from "./detail.js";

export const refreshList = () => announce("evaluations-changed");

// Re-apply the selection and the ticks after the list was (re)drawn; follow a running evaluation.
export function applyListState() {
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
    else if (row.dataset.status !== state.shownStatus || isActive(row.dataset.status)) loadDetail();
  }
}

$("evaluation-list").addEventListener("click", async (evt) => {
  const row = evt.target.closest("tr.eval-row");
  if (!row) return;
  const id = row.dataset.evaluationId;
  const button = evt.target.closest("button[data-action]");
  if (button?.dataset.action === "delete") {
    if (!confirm(`Delete the evaluation of ${row.dataset.name} (${row.dataset.subset})?`)) return;
    await api("DELETE", `/api/evaluation/${pid}/${id}`, null, $("evaluations-error")).catch(() => null);
    forgetEvaluation(id);
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

$("compare-clear").addEventListener("click", () => { state.compare = []; applyListState(); });
