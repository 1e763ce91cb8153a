// "Download weights" beside Pretrained on the Training page: POST /api/weights for the task's
// models (the selected one first), then follow GET /api/weights until the download ends; each
// model whose file arrives is marked in the model list, which ticks Pretrained (training.js).
import { $, api } from "./common.js";

const box = $("weights-download");
const select = $("model-select");

function mb(bytes) { return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 1 : 0)} MB`; }

function selectedMissing() {
  const opt = select && select.selectedOptions[0];
  return Boolean(opt && opt.dataset.weights !== "yes");
}

let watched = false; // this page saw a download run: keep its outcome in view

function show(data) {
  const job = data.download;
  for (const m of data.models) {
    const opt = select && select.querySelector(`option[value="${CSS.escape(m.name)}"]`);
    if (opt && m.available && opt.dataset.weights !== "yes") {
      opt.dataset.weights = "yes";
      if (opt.selected) select.dispatchEvent(new Event("change"));
    }
  }
  const running = Boolean(job && job.status === "running");
  watched = watched || running;
  $("weights-fetch").disabled = running;
  $("weights-fetch").hidden = !running && data.models.every((m) => m.available); // nothing left to fetch
  const bar = $("weights-bar");
  bar.hidden = !running;
  let text = "";
  if (running) {
    const file = job.current ? `${job.current}: ${mb(job.bytes_done)}${job.bytes_total ? ` / ${mb(job.bytes_total)}` : ""}` : "starting…";
    text = `Downloading from ${data.source} — ${file} (file ${Math.min(job.files_done + 1, job.files_total)} of ${job.files_total})`;
    const part = job.bytes_total ? job.bytes_done / job.bytes_total : 0;
    bar.firstElementChild.style.width = `${(100 * (job.files_done + part)) / Math.max(job.files_total, 1)}%`;
  } else if (job && job.status === "completed") {
    text = job.files_total ? `Downloaded ${job.files_total} weights file${job.files_total > 1 ? "s" : ""}.` : "";
  }
  $("weights-progress").textContent = text;
  $("weights-error").textContent = job && job.status === "failed" ? `Download failed — ${job.error}` : "";
  box.hidden = !running && !watched && !selectedMissing();
  return running;
}

async function follow() {
  const data = await api("GET", `/api/weights?task=${box.dataset.task}`, null, $("weights-error"));
  if (show(data)) setTimeout(follow, 500);
}

async function start() {
  const names = [...select.options].map((o) => o.value);
  const first = select.value;
  const models = [first, ...names.filter((n) => n !== first)];
  $("weights-error").textContent = "";
  $("weights-fetch").disabled = true;
  try {
    show(await api("POST", "/api/weights", { models }, $("weights-error")));
    follow();
  } catch {
    $("weights-fetch").disabled = false;
  }
}

if (box && select) {
  $("weights-fetch").addEventListener("click", start);
  select.addEventListener("change", () => { box.hidden = !watched && !selectedMissing(); });
  follow(); // a download started before this page was opened (another tab, a reload) shows its progress
}
