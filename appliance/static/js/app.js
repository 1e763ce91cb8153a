// Behaviour of every page (loaded by base.html): the htmx "json-form" extension, error envelopes
// of htmx requests shown next to their form, and the projects list's Rename button.
import { api, clearToasts, confirmForce, humanError, offersForce, toast, withForce } from "./common.js";

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
    if (!el.name) continue;
    if (el.disabled) { // skipped, except a checkbox marked `data-sent-disabled` (sent as it shows, e.g. false)
      if (el.type === "checkbox" && el.dataset.sentDisabled !== undefined) out[el.name] = el.checked;
      continue;
    }
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
  let body = null;
  try {
    body = JSON.parse(evt.detail.xhr.responseText);
    if (body.error) message = humanError(body.error);
  } catch (_) { /* not JSON */ }
  const { verb, path } = evt.detail.requestConfig;
  if (verb === "delete" && offersForce(evt.detail.xhr.status, body) && confirmForce(body.error.message)) {
    const elt = evt.detail.elt;
    // No `source`: that would ask the element's hx-confirm question a second time.
    htmx.ajax("DELETE", withForce(path), { target: elt.getAttribute("hx-target") || elt,
                                           swap: elt.getAttribute("hx-swap") || "innerHTML" });
    return;
  }
  const box = errorBoxFor(evt.detail.elt);
  if (box) box.textContent = message; else toast(message);
});
document.addEventListener("htmx:beforeRequest", (evt) => {
  const box = errorBoxFor(evt.detail.elt);
  if (box) box.textContent = "";
});
// A successful action (not a poll) means the failure a toast reported is over.
document.addEventListener("htmx:afterRequest", (evt) => {
  if (evt.detail.successful && evt.detail.requestConfig && evt.detail.requestConfig.verb !== "get") clearToasts();
});

function errorBoxFor(elt) {
  const scope = elt && (elt.closest("section") || elt.closest("form"));
  return scope ? scope.querySelector(".error") : null;
}

// Projects list: Rename (the list is a server-rendered fragment, hence the delegated listener).
document.addEventListener("click", async (evt) => {
  const button = evt.target.closest("#project-list button.rename");
  if (!button) return;
  const id = button.closest("tr[data-project-id]").dataset.projectId;
  const current = button.dataset.name;
  const name = prompt("New name", current);
  if (!name || name === current) return;
  try {
    await api("PATCH", `/api/projects/${id}`, { name });
  } catch (_) { return; /* shown in a toast */ }
  htmx.ajax("GET", "/api/projects", { target: "#project-list", swap: "innerHTML" });
});
