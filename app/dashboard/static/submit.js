// The submit form: one form per task family (rendered by the server from the config dataclasses).
// Only fields that differ from their defaults are sent; the API validates everything and its
// problem+json messages appear next to the field they name.
"use strict";

(() => {
  const { $, api } = ml3;
  const forms = [...document.querySelectorAll(".job-form")];
  const tabs = [...document.querySelectorAll("#family-tabs button")];
  const newKey = () => (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`);
  let idempotencyKey = newKey();  // a double click submits one job, not two

  function number(text) {
    const t = text.trim();
    return t !== "" && Number.isFinite(Number(t)) ? Number(t) : t;  // not a number: let the API say so
  }

  function value(input) {
    const type = input.dataset.type;
    if (type === "bool") return input.checked;
    const text = input.value;
    if (text.trim() === "" && input.dataset.default === "null") return null;
    if (type === "int" || type === "float") return number(text);
    if (type.startsWith("list[")) {
      const parts = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
      return type === "list[str]" ? parts : parts.map(number);
    }
    return text.trim();
  }

  // defaults as JS would write them (Python writes 5.0 and ", ")
  const fields = (form) => [...form.querySelectorAll("[data-type]")];
  for (const input of document.querySelectorAll("[data-type]")) {
    input.dataset.default = JSON.stringify(JSON.parse(input.dataset.default));
  }

  // a preset fills every field with what it runs with; only fields changed from it are sent, with its name
  const shown = (v) => (Array.isArray(v) ? v.join(", ") : v === null ? "" : String(v));
  function applyPreset(form) {
    const select = form.elements.preset;
    const preset = JSON.parse(select.dataset.presets)[select.value];
    $("[data-role=preset-why]", form).textContent = preset.why;
    for (const input of fields(form)) {
      if (!(input.name in preset.values)) continue;
      const v = preset.values[input.name];
      input.dataset.default = JSON.stringify(v);
      if (input.dataset.type === "bool") input.checked = v;
      else input.value = shown(v);
    }
  }
  const changed = (input) => JSON.stringify(value(input)) !== input.dataset.default;

  function spec(form) {
    const body = { task: { family: form.dataset.family } };
    if (form.elements.preset.value !== "default") body.preset = form.elements.preset.value;
    for (const input of fields(form).filter(changed)) {
      const v = value(input);
      const path = input.name.split(".");
      let node = body;
      for (const p of path.slice(0, -1)) node = node[p] = node[p] || {};
      node[path[path.length - 1]] = v;
    }
    const name = form.elements.register_as.value.trim();
    if (name) body.register_as = name;
    return body;
  }

  function preview(form) {
    $("[data-role=preview]", form).textContent = `POST /v1/jobs\n${JSON.stringify(spec(form), null, 2)}`;
    fields(form).forEach((input) => input.classList.toggle("changed", changed(input)));
    estimate(form);
  }

  // the run time this job would take, estimated by the server from the job's size (app.services.limits)
  const timers = new Map();
  function estimate(form) {
    clearTimeout(timers.get(form));
    timers.set(form, setTimeout(async () => {
      const box = $("[data-role=estimate]", form);
      try {
        const e = await api("/submit/estimate", { method: "POST", body: spec(form) });
        box.className = `estimate${e.over_limit ? " error-text" : ""}`;
        if (e.seconds === null) { box.textContent = e.basis; delete box.dataset.seconds; return; }
        box.textContent = `Estimated run time: about ${ml3.duration(e.seconds)} (${e.basis}); `
          + `peak memory about ${ml3.num(e.peak_bytes / 2 ** 20)} MiB in the ${e.peak_phase}.`
          + (e.over_limit ? ` Over this server's limits: ${e.over_limit}` : "");
        box.dataset.seconds = e.seconds;
      } catch (err) {
        box.className = "estimate muted";
        box.textContent = `No estimate until the spec is valid: ${err.message}`;
        delete box.dataset.seconds;
      }
    }, 300));
  }

  function select(family) {
    const chosen = forms.find((f) => f.dataset.family === family) || forms[0];
    forms.forEach((f) => { f.hidden = f !== chosen; });
    tabs.forEach((t) => t.setAttribute("aria-selected", String(t.dataset.family === chosen.dataset.family)));
    history.replaceState(null, "", `/submit?family=${encodeURIComponent(chosen.dataset.family)}`);
    preview(chosen);
  }

  for (const form of forms) {
    form.addEventListener("input", () => preview(form));
    form.addEventListener("reset", () => setTimeout(() => { ml3.clearErrors(form); applyPreset(form); preview(form); }));
    form.elements.preset.addEventListener("change", () => { applyPreset(form); preview(form); });
    form.querySelectorAll(".section-toggle").forEach((b) => b.addEventListener("click", () => {
      const fs = b.closest("fieldset");
      fs.classList.toggle("collapsed");
      b.setAttribute("aria-expanded", String(!fs.classList.contains("collapsed")));
    }));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = form.querySelector("button[type=submit]");
      ml3.clearErrors(form);
      button.disabled = true;
      button.textContent = "Submitting…";
      try {
        const job = await api("/v1/jobs", { method: "POST", body: spec(form), headers: { "Idempotency-Key": idempotencyKey } });
        idempotencyKey = newKey();
        location.href = `/jobs/${job.id}`;
      } catch (err) {
        ml3.showErrors(form, err);
        const bad = form.querySelector(".field.invalid");
        if (bad) {
          bad.closest("fieldset")?.classList.remove("collapsed");
          bad.scrollIntoView({ block: "center" });
          bad.querySelector("input, select")?.focus();
        } else {
          form.scrollIntoView();
        }
        button.disabled = false;
        button.textContent = "Submit job";
      }
    });
  }
  tabs.forEach((t) => t.addEventListener("click", () => select(t.dataset.family)));
  window.addEventListener("pageshow", (e) => { if (e.persisted) idempotencyKey = newKey(); });
  select(new URLSearchParams(location.search).get("family") || "sine");
})();
