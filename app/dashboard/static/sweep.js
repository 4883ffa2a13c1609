// One sweep: its trials as a sortable leaderboard (score and each horizon's ratio), one scatter plot of
// score against each swept setting, polled from GET /v1/jobs/{id} until the sweep ends.
"use strict";

(() => {
  const { $, el, api, num, FINAL } = ml3;
  const id = $("#sweep").dataset.jobId;
  let job = null, sortKey = "rank", sortUp = true;

  const settingText = (v) => (typeof v === "number" ? num(v) : JSON.stringify(v));
  const scoreClass = (v) => (v === null || v === undefined ? "" : v < 1 ? "good" : v > 1 ? "bad" : "");

  function columns() {
    const horizons = [...new Set(job.trials.flatMap((t) => Object.keys(t.ratios)))].sort((a, b) => a - b);
    const keys = Object.keys((job.trials[0] || { params: {} }).params);
    return [
      { key: "rank", label: "rank", value: (t) => job.leaderboard.indexOf(t.trial) + 1 },
      { key: "trial", label: "trial", value: (t) => t.trial },
      { key: "status", label: "status", value: (t) => t.status, cell: (t) => ml3.badge(t.status) },
      { key: "score", label: "score", value: (t) => t.score, num: true },
      ...horizons.map((h) => ({ key: `@${h}`, label: `ratio at ${h} steps`, value: (t) => t.ratios[h], num: true })),
      ...keys.map((k) => ({ key: k, label: k, value: (t) => t.params[k], text: settingText })),
      { key: "job", label: "job", value: (t) => t.id, cell: (t) => el("a", { href: `/jobs/${t.id}`, text: `job ${t.id}` }) },
    ];
  }

  function compare(a, b) {  // missing scores (failed, diverged, running) last either way
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;
    if (b === null || b === undefined) return -1;
    const c = typeof a === "number" && typeof b === "number" ? a - b : JSON.stringify(a).localeCompare(JSON.stringify(b));
    return sortUp ? c : -c;
  }

  function renderTable() {
    const cols = columns();
    const col = cols.find((c) => c.key === sortKey) || cols[0];
    const rows = [...job.trials].sort((a, b) => compare(col.value(a), col.value(b)) || a.trial - b.trial);
    $("#leaderboard thead").replaceChildren(el("tr", {}, cols.map((c) => el("th", {
      class: `sortable${c.num ? " num" : ""}`, "data-sort": c.key, "aria-sort": c.key === sortKey ? (sortUp ? "ascending" : "descending") : null,
      onclick: () => { sortUp = c.key === sortKey ? !sortUp : true; sortKey = c.key; renderTable(); },
      text: c.label + (c.key === sortKey ? (sortUp ? " ▲" : " ▼") : "") }))));
    $("#leaderboard tbody").replaceChildren(...rows.map((t) => el("tr", { "data-trial": t.trial },
      cols.map((c) => el("td", { class: c.num ? `num ${scoreClass(c.value(t))}` : "" },
        c.cell ? c.cell(t) : c.num ? num(c.value(t)) : c.text ? c.text(c.value(t)) : String(c.value(t)))))));
  }

  // score (y, log when it spans a decade) against one setting (x: numbers on a log axis when they span
  // more than 30x, else linear; other choices as evenly spaced categories)
  function scatter(key) {
    const pts = job.trials.filter((t) => t.score !== null && t.score !== undefined);
    const W = 420, H = 240, L = 56, R = 12, T = 12, B = 40;
    const { svg, add } = ml3.svgChart(W, H);
    svg.dataset.setting = key;
    const xs = pts.map((t) => t.params[key]);
    const numeric = xs.every((v) => typeof v === "number");
    const cats = numeric ? [] : [...new Set(xs.map(settingText))];
    const logX = numeric && Math.min(...xs) > 0 && Math.max(...xs) / Math.min(...xs) > 30;
    const fx = (v) => (numeric ? (logX ? Math.log10(v) : v) : cats.indexOf(settingText(v)));
    const ys = pts.map((t) => t.score);
    const logY = Math.min(...ys) > 0 && Math.max(...ys) / Math.min(...ys) > 10;
    const fy = (v) => (logY ? Math.log10(v) : v);
    const span = (vals) => {
      let lo = Math.min(...vals), hi = Math.max(...vals);
      if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
      const pad = (hi - lo) * 0.08;
      return [lo - pad, hi + pad];
    };
    const [x0, x1] = span(pts.map((t) => fx(t.params[key])));
    const [y0, y1] = span(ys.map(fy));
    const X = (v) => L + ((fx(v) - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => T + (1 - (fy(v) - y0) / (y1 - y0)) * (H - T - B);
    add("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" });
    add("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" });
    if (1 > (logY ? 10 ** y0 : y0) && 1 < (logY ? 10 ** y1 : y1)) {
      add("line", { x1: L, x2: W - R, y1: Y(1), y2: Y(1), class: "grid", "stroke-dasharray": "4 3" });
    }
    for (const [v, label] of [[y0, logY ? 10 ** y0 : y0], [y1, logY ? 10 ** y1 : y1]]) {
      const y = T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
      add("text", { x: L - 6, y: y + 4, class: "tick", "text-anchor": "end" }, num(label));
    }
    const ticks = numeric ? [...new Set(xs)] : cats;
    for (const v of ticks) {
      const x = numeric ? X(v) : L + ((cats.indexOf(v) - x0) / (x1 - x0)) * (W - L - R);
      add("text", { x, y: H - B + 16, class: "tick", "text-anchor": "middle" }, numeric ? num(v) : v);
    }
    add("text", { x: (L + W - R) / 2, y: H - 4, class: "label", "text-anchor": "middle" }, key + (logX ? " (log)" : ""));
    add("text", { x: 12, y: (T + H - B) / 2, class: "label", "text-anchor": "middle",
      transform: `rotate(-90 12 ${(T + H - B) / 2})` }, "score" + (logY ? " (log)" : ""));
    for (const t of pts) {
      const c = add("circle", { cx: X(t.params[key]), cy: Y(t.score), r: 5, fill: ml3.COLORS.learned,
        "fill-opacity": 0.75, "data-trial": t.trial });
      const title = document.createElementNS(svg.namespaceURI, "title");
      title.textContent = `trial ${t.trial}: score ${num(t.score)}`;
      c.append(title);
    }
    return el("div", { class: "card chart-card" }, el("h3", { text: `score against ${key}` }), svg);
  }

  function render() {
    const badge = $("#job-status");
    badge.className = `badge ${job.status}`;
    badge.textContent = job.status;
    const s = job.spec || {};
    $("#job-summary").textContent = `${s.sampler || "grid"} sweep of ${(s.base.task || {}).family} · ${s.trials} trials · `
      + `registers the best as ${s.register_as || (s.base.task || {}).family}`;
    const p = job.progress;
    const pct = ml3.setProgress($("#progress"), p.completed, p.total);
    $("#progress-text").textContent = `${p.completed} / ${p.total} trials ended · ${pct}%`;
    const cancel = $("#cancel");
    cancel.hidden = FINAL.includes(job.status);
    cancel.disabled = job.cancel_requested;
    const err = $("#job-error");
    err.hidden = !job.error;
    if (job.error) err.replaceChildren(el("strong", { text: `${job.error.code}: ` }), job.error.detail);
    const r = job.result || {}, box = $("#result");
    box.replaceChildren(...(r.loss ? [el("p", {}, "Registered ", el("a", { id: "result-loss", href: ml3.versionHref(r.name, r.version),
      text: r.loss }), ` from trial ${r.best_trial} (job ${r.best_job}), score ${num(r.score)}.`)] : []));
    box.hidden = !r.loss;
    renderTable();
    const keys = Object.keys((job.trials[0] || { params: {} }).params);
    const scored = job.trials.some((t) => t.score !== null && t.score !== undefined);
    $("#plots-section").hidden = !scored;
    if (scored) $("#plots").replaceChildren(...keys.map(scatter));
    $("#job-spec").textContent = JSON.stringify(job.spec, null, 2);
    document.title = `Sweep ${id} · ${job.status} · ml3`;
  }

  $("#cancel").addEventListener("click", async () => {
    $("#cancel").disabled = true;
    try {
      await api(`/v1/jobs/${id}/cancel`, { method: "POST" });
    } catch (e) {
      ml3.notice(`Could not cancel: ${e.message}`, "error");
    }
  });

  (async () => {
    for (;;) {
      try {
        job = await api(`/v1/jobs/${id}`);
      } catch (e) {
        $("#job-error").hidden = false;
        $("#job-error").textContent = e.status === 404 ? `There is no job ${id}.` : `Could not load sweep ${id}: ${e.message}`;
        return;
      }
      render();
      if (FINAL.includes(job.status)) return;
      await ml3.sleep(1500);
    }
  })();
})();
