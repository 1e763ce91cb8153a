// Split page: the live sum of the new split's ratios (they must add up to 1).
import { $ } from "./common.js";

const form = $("create-split");

function updateRatioSum() {
  const sum = ["train", "val", "test"].reduce((a, k) => a + (Number(form.elements[k].value) || 0), 0);
  const out = $("ratio-sum");
  out.textContent = `sum ${sum.toFixed(2)}`;
  out.classList.toggle("bad-sum", Math.abs(sum - 1) > 1e-6);
}

form.addEventListener("input", updateRatioSum);
form.addEventListener("htmx:afterRequest", (evt) => {
  if (!evt.detail.successful) return;
  form.reset();
  updateRatioSum();
});
