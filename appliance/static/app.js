// AI Studio page helpers. Plain JS on top of the vendored htmx; no build step.

// htmx extension "json-form": send a form as a JSON body typed from its inputs
// (number inputs → numbers, checkboxes → booleans, multi-selects/`data-list` → arrays, empty optional → omitted).
htmx.defineExtension("json-form", {
  onEvent(name, evt) {
    if (name === "htmx:configRequest") evt.detail.headers["Content-Type"] = "application/json";
  },
  encodeParameters(xhr, parameters, elt) {
    xhr.overrideMimeType("text/json");
    const form = elt.closest("form") || elt;
    return JSON.stringify(formToJson(form));
  },
});

function formToJson(form) {
  const out = {};
  for (const el of form.elements) {
    if (!el.name || el.disabled) continue;
    if (el.type === "checkbox") {
      if (el.dataset.list !== undefined) { (out[el.name] ||= []); if (el.checked) out[el.name].push(el.value); }
      else out[el.name] = el.checked;
    } else if (el.type === "number" || el.dataset.type === "number") {
      if (el.value !== "") out[el.name] = Number(el.value);
    } else if (el.tagName === "SELECT" && el.multiple) {
      out[el.name] = Array.from(el.selectedOptions).map((o) => o.value);
    } else if (el.type === "radio") {
      if (el.checked) out[el.name] = el.value;
    } else if (el.value !== "" || el.required) {
      out[el.name] = el.value;
    }
  }
  return out;
}

// Show error envelopes from htmx requests next to the form (or in a toast).
document.addEventListener("htmx:responseError", (evt) => {
  let message = `Request failed (${evt.detail.xhr.status})`;
  try {
    const body = JSON.parse(evt.detail.xhr.responseText);
    if (body.error) message = `${body.error.code}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  showError(evt.detail.elt, message);
});
document.addEventListener("htmx:beforeRequest", (evt) => {
  const box = errorBoxFor(evt.detail.elt);
  if (box) box.textContent = "";
});

function errorBoxFor(elt) {
  const scope = elt && (elt.closest("section") || elt.closest("form"));
  return scope ? scope.querySelector(".error") : null;
}

function showError(elt, message) {
  const box = errorBoxFor(elt);
  if (box) { box.textContent = message; return; }
  toast(message);
}

function toast(message) {
  const t = document.createElement("div");
  t.className = "toast";
  t.setAttribute("role", "alert");
  t.textContent = message;
  document.body.appendChild(t);
  setTimeout(() => t.remove(), 6000);
}

// The one fetch helper for pages: JSON (or FormData) in, the envelope's data out; an error
// envelope is shown in `errorBox` (or a toast) and thrown.
async function api(method, url, body, errorBox) {
  if (errorBox) errorBox.textContent = "";
  const isForm = body instanceof FormData;
  const res = await fetch(url, {
    method,
    headers: body && !isForm ? { "Content-Type": "application/json" } : {},
    body: isForm ? body : body ? JSON.stringify(body) : undefined,
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok || data.status === "error") {
    const msg = data.error ? `${data.error.code}: ${data.error.message}` : `Request failed (${res.status})`;
    if (errorBox) errorBox.textContent = msg; else toast(msg);
    throw new Error(msg);
  }
  return data.data;
}

async function renameProject(id, current) {
  const name = prompt("New name", current);
  if (!name || name === current) return;
  await api("PATCH", `/api/projects/${id}`, { name });
  htmx.ajax("GET", "/api/projects", { target: "#project-list", swap: "innerHTML" });
}
