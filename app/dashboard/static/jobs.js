// The jobs list: filters in the URL, refreshed every 2 s while a job is active (every 10 s otherwise).
"use strict";

(() => {
  const { $, el, api, badge, progressBar, ago, duration, runTime, FINAL } = ml3;
  const params = new URLSearchParams(location.search);
  const filter = { status: params.get("status") || "", kind: params.get("kind") || "" };
  let cursor = null, older = [];

  function query(extra = {}) {
    const q = new URLSearchParams({ limit: 50, ...extra });
    if (filter.status) q.set("status", filter.status);
    if (filter.kind) q.set("kind", filter.kind);
    return `/v1/jobs?${q}`;
  }

  function what(job) {
    if (job.kind === "meta-test") return el("span", {}, "meta-test of ", el("code", { text: job.spec.loss || "?" }));
    const task = job.spec.task || {};
    const name = job.spec.register_as || task.family;
    return el("span", {}, el("strong", { text: task.family || "?" }), name && name !== task.family ? ` → ${name}` : "");
  }

  // learned / tuned baseline per horizon (the published seed's, or over all seeds of a meta-test): red where it loses
  function ratios(horizon) {
    if (!horizon || !horizon.length) return "";
    return el("span", { class: "ratios small", title: "learned / plain loss at its best lr, after each number of steps" },
      "vs tuned:", horizon.map((h) => {
        const v = h.ratio_vs_tuned === undefined ? h.heldout_ratio : h.ratio_vs_tuned;
        return el("span", { class: ml3.loses(v) ? "bad" : "good", "data-steps": h.steps },
          `${v === null ? "diverged" : ml3.num(v)} @${h.steps}`);
      }));
  }

  function result(job) {
    if (job.status === "failed" && job.error) {
      return el("span", { class: "error-text", title: job.error.detail }, job.error.code);
    }
    const r = job.result || {};
    if (job.kind === "meta-train" && r.name) {
      return [el("a", { href: ml3.versionHref(r.name, r.version), text: r.loss }), " ", ratios(r.horizon)];
    }
    if (job.kind === "meta-test" && r.horizon && r.horizon.length) return ratios(r.horizon);
    return job.cancel_requested && !FINAL.includes(job.status) ? el("span", { class: "muted", text: "canceling…" }) : "";
  }

  function row(job) {
    const p = job.progress;
    const pct = ml3.percent(p.completed, p.total);
    return el("tr", { "data-job": job.id, class: "clickable", onclick: (e) => {
      if (!e.target.closest("a")) location.href = `/jobs/${job.id}`;
    } },
    el("td", {}, el("a", { href: `/jobs/${job.id}`, text: `#${job.id}` }), el("div", { class: "muted small", text: job.kind })),
    el("td", {}, what(job)),
    el("td", {}, badge(job.status)),
    el("td", {}, el("div", { class: "progress-cell" }, progressBar(p.completed, p.total),
      el("span", { class: "muted small", text: `${pct}% · ${p.completed}/${p.total}` }))),
    el("td", { title: ml3.when(job.created_at), text: ago(job.created_at) }),
    el("td", { class: "num", text: duration(runTime(job)) }),
    el("td", {}, result(job)));
  }

  function render(items) {
    $("#jobs tbody").replaceChildren(...items.map(row));
    $("#jobs-empty").hidden = items.length > 0;
    if (!items.length && (filter.status || filter.kind)) $("#jobs-empty").textContent = "No jobs match these filters.";
  }

  let timer = null, first = [];
  const all = () => {
    const seen = new Set(first.map((j) => j.id));
    return [...first, ...older.filter((j) => !seen.has(j.id))];
  };
  async function refresh() {
    clearTimeout(timer);
    try {
      const page = await api(query());
      first = page.items;
      if (!older.length) cursor = page.next_cursor;
      render(all());
      $("#jobs-more").hidden = !cursor;
    } catch (e) {
      if (e instanceof ml3.ApiError) ml3.notice(`Could not list jobs: ${e.message}`, "error");
    }
    const active = first.some((j) => !FINAL.includes(j.status));
    timer = setTimeout(refresh, document.hidden ? 10000 : active ? 2000 : 10000);
  }

  $("#jobs-more").addEventListener("click", async () => {
    const page = await api(query({ cursor }));
    older = older.concat(page.items);
    cursor = page.next_cursor;
    render(all());
    $("#jobs-more").hidden = !cursor;
  });

  function syncFilters() {
    document.querySelectorAll("#status-filter button").forEach((b) =>
      b.classList.toggle("active", b.dataset.status === filter.status));
    $("#kind-filter").value = filter.kind;
    const q = new URLSearchParams();
    if (filter.status) q.set("status", filter.status);
    if (filter.kind) q.set("kind", filter.kind);
    history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
  }

  function setFilter(key, value) {
    filter[key] = value;
    older = [];
    cursor = null;
    syncFilters();
    refresh();
  }

  document.querySelectorAll("#status-filter button").forEach((b) =>
    b.addEventListener("click", () => setFilter("status", b.dataset.status)));
  $("#kind-filter").addEventListener("change", (e) => setFilter("kind", e.target.value));
  syncFilters();
  refresh();
})();
