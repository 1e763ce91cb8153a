// Export page: keeps the form's options consistent with the chosen format (FP16 is a TensorRT
// build option; TorchScript has no opset) and handles Delete in the server-rendered list.
import { $, announce, api } from "./common.js";

const root = $("export-page");
const pid = root.dataset.projectId;
const detection = root.dataset.task === "detection";
const form = $("export-form");

const HINTS = {
  onnx: "ONNX: one self-contained .onnx file, run with onnxruntime by the bundle's predict.py.",
  torchscript: "TorchScript: a traced/scripted .pt file for PyTorch (torch.jit.load); no opset.",
  tensorrt: "TensorRT: an engine built from the ONNX on this host's GPU, FP32 or FP16; it only loads on the same GPU model and TensorRT version.",
};

function syncOptions() {
  const fmt = form.querySelector("input[name=format]:checked")?.value || "onnx";
  const fp16 = $("precision-fp16");
  fp16.disabled = fmt !== "tensorrt";
  if (fp16.disabled && fp16.checked) form.querySelector("input[name=precision][value=fp32]").checked = true;
  $("fp16-label").title = fp16.disabled ? "FP16 is a TensorRT build option; ONNX and TorchScript exports are FP32" : "";
  $("fp16-label").classList.toggle("off", fp16.disabled);
  const opset = $("export-opset");
  opset.disabled = fmt === "torchscript";
  opset.closest("label").classList.toggle("off", opset.disabled);
  let hint = HINTS[fmt] || "";
  if (fmt !== "tensorrt") hint += " FP16 is only offered for TensorRT.";
  if (detection) hint += " Detection models keep NMS inside the graph, so their batch is fixed at 1.";
  $("format-hint").textContent = hint;
}
form.addEventListener("change", (evt) => { if (evt.target.name === "format") syncOptions(); });
syncOptions();

const refreshList = () => announce("exports-changed");

$("export-list").addEventListener("click", async (evt) => {
  const button = evt.target.closest("button[data-action=delete]");
  if (!button) return;
  const row = button.closest("tr.export-row");
  if (!confirm(`Delete the ${row.dataset.format} export of ${row.dataset.name}?`)) return;
  button.disabled = true;
  await api("DELETE", `/api/export/${pid}/${row.dataset.exportId}`, null, $("exports-error")).catch(() => null);
  refreshList();
});

window.exportPage = {
  started() { $("export-error").textContent = ""; refreshList(); },
};
