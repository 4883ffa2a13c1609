// Shared by every page: API calls that carry the stored key, Server-Sent Events read with fetch,
// a small SVG line chart with bands, the meta-test section, and formatting.
"use strict";

const ml3 = (() => {
  const KEY = "ml3.apiKey";
  const FINAL = ["succeeded", "failed", "canceled"];
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const $ = (sel, root = document) => root.querySelector(sel);

  // -- the API key: entered once, kept in localStorage, sent on every request ----------------------
  const getKey = () => localStorage.getItem(KEY) || "";
  const versionHref = (name, v) => `/losses/${encodeURIComponent(name)}/versions/${v}`;
  const percent = (completed, total) => (total ? Math.min(100, Math.floor((100 * completed) / total)) : 0);
  const formError = (form) => $("[data-role=form-error]", form) || form.parentElement.querySelector("[data-role=form-error]");

  function authHeaders(extra = {}) {
    const key = getKey();
    return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
  }

  function initKeyBox() {
    const toggle = $("#key-toggle"), form = $("#key-form"), input = $("#key-input");
    const show = () => { $("#key-state").textContent = getKey() ? `…${getKey().slice(-4)}` : "none"; };
    show();
    toggle.addEventListener("click", () => {
      form.hidden = !form.hidden;
      toggle.setAttribute("aria-expanded", String(!form.hidden));
      if (!form.hidden) { input.value = getKey(); input.focus(); }
    });
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const key = input.value.trim();
      key ? localStorage.setItem(KEY, key) : localStorage.removeItem(KEY);
      location.reload();
    });
    $("#key-clear").addEventListener("click", () => { localStorage.removeItem(KEY); location.reload(); });
  }

  function notice(text, kind = "warn") {
    const box = $("#notice");
    box.className = `notice ${kind}`;
    box.textContent = text;
    box.hidden = false;
  }

  // -- requests -------------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  function checkAuth(status) {
    if (status === 401 || status === 403) {
      notice(getKey() ? "The server refused the stored API key: enter another under \u201cAPI key\u201d (top right)."
        : "This server asks for an API key: enter it under \u201cAPI key\u201d (top right).", "error");
    }
  }

  async function request(path, { method = "GET", body, headers = {} } = {}) {
    const init = { method, headers: authHeaders({ Accept: "application/json", ...headers }) };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const r = await fetch(path, init);
    checkAuth(r.status);
    if (!r.ok) {
      const text = await r.text();
      let problem;
      try { problem = JSON.parse(text); } catch { problem = { detail: text || r.statusText }; }
      throw new ApiError(r.status, problem);
    }
    return r;
  }

  const api = async (path, options) => {
    const r = await request(path, options);
    return r.status === 204 ? null : r.json();
  };

  // <img> and <a download> cannot send a header: fetch the bytes, hand out an object URL
  async function blobUrl(path) {
    return URL.createObjectURL(await (await request(path, { headers: { Accept: "*/*" } })).blob());
  }

  async function loadImage(img, path) {
    img.src = await blobUrl(path);
    await img.decode().catch(() => {});
    return img;
  }

  // -- Server-Sent Events over fetch (EventSource cannot send Authorization) --------------------------
  // Calls onEvent(type, data) for each event; reconnects with Last-Event-ID until done() is true.
  async function follow(path, onEvent, done) {
    let last = null;
    while (!done()) {
      try {
        const headers = { Accept: "text/event-stream" };
        if (last) headers["Last-Event-ID"] = last;
        const r = await request(path, { headers });
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done: end } = await reader.read();
          if (end) break;
          buffer += value.replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            const ev = { type: "message", data: "" };
            for (const line of block.split("\n")) {
              const i = line.indexOf(":");
              if (i === 0) continue;  // a comment (keep-alive)
              const field = i < 0 ? line : line.slice(0, i), val = i < 0 ? "" : line.slice(i + 1).trimStart();
              if (field === "id") ev.id = val;
              else if (field === "event") ev.type = val;
              else if (field === "data") ev.data += val;
            }
            if (ev.id) last = ev.id;
            if (ev.data) onEvent(ev.type, JSON.parse(ev.data));
          }
        }
      } catch (e) {
        if (e instanceof ApiError && e.status < 500) throw e;
      }
      if (!done()) await sleep(1000);
    }
  }

  // -- formatting -----------------------------------------------------------------------------------
  function num(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  const parseTime = (t) => (t ? new Date(t) : null);

  function duration(seconds) {
    if (seconds === null || seconds === undefined || seconds < 0) return "–";
    if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
    const m = Math.floor(seconds / 60), s = Math.round(seconds % 60);
    if (m < 60) return `${m} min ${String(s).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  function ago(t) {
    const d = parseTime(t);
    if (!d) return "–";
    const s = (Date.now() - d) / 1000;
    if (s < 45) return "just now";
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return d.toLocaleDateString();
  }

  const pad2 = (n) => String(n).padStart(2, "0");
  function when(t) {  // local time, 2026-01-31 14:05:09
    const d = parseTime(t);
    if (!d) return "–";
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} `
      + `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function runTime(job) {
    const start = parseTime(job.started_at);
    if (!start) return null;
    const end = parseTime(job.finished_at) || (FINAL.includes(job.status) ? start : new Date());
    return (end - start) / 1000;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c !== null && c !== undefined && c !== false) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  const badge = (status) => el("span", { class: `badge ${status}`, text: status });

  function progressBar(completed, total) {
    const pct = percent(completed, total);
    return el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-valuenow": pct, title: `${completed} / ${total}` }, el("div", { class: "bar", style: `width:${pct}%` }));
  }

  function setProgress(bar, completed, total) {
    const pct = percent(completed, total);
    bar.setAttribute("aria-valuenow", pct);
    bar.firstElementChild.style.width = `${pct}%`;
    return pct;
  }

  // form errors: problem+json ``errors`` [{loc, msg}] next to the field named loc, the rest on top
  function clearErrors(form) {
    form.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
    form.querySelectorAll(".field-error").forEach((p) => { p.hidden = true; p.textContent = ""; });
    const top = formError(form);
    if (top) top.hidden = true;
  }

  function showErrors(form, e) {
    const problem = e.problem || { detail: String(e) };
    let unplaced = [];
    for (const err of problem.errors || [{ loc: "", msg: problem.detail }]) {
      const field = form.querySelector(`.field[data-loc="${CSS.escape(err.loc)}"]`);
      if (field) {
        field.classList.add("invalid");
        const p = $(".field-error", field);
        p.textContent = err.msg;
        p.hidden = false;
      } else {
        unplaced.push(err.loc ? `${err.loc}: ${err.msg}` : err.msg);
      }
    }
    const top = formError(form);
    if (!top) return;
    if (!unplaced.length && !form.querySelector(".field.invalid")) unplaced = [problem.detail];
    top.textContent = "";
    top.append(el("strong", { text: `${problem.title || "Error"} (${e.status || "network"})` }),
      unplaced.length ? ` — ${unplaced.join("; ")}` : " — see the highlighted fields below.");
    top.hidden = false;
  }

  // -- charts: mean line + band (range over seeds) per series, in SVG ---------------------------------
  const COLORS = { learned: "#2563eb", mse: "#ea580c", tuned: "#111827", other: "#7c3aed" };

  function niceTicks(lo, hi, n = 5) {
    const span = hi - lo || Math.abs(hi) || 1;
    const step0 = span / n, mag = 10 ** Math.floor(Math.log10(step0));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
    return ticks;
  }

  function logTicks(lo, hi) {
    const ticks = [];
    for (let e = Math.floor(lo); e <= Math.ceil(hi); e++) {
      for (const m of hi - lo < 1.5 ? [1, 2, 5] : [1]) {
        const v = Math.log10(m) + e;
        if (v >= lo - 1e-9 && v <= hi + 1e-9) ticks.push(v);
      }
    }
    return ticks;
  }

  // a log steps axis that keeps step 0: log10(1 + k); ticks 0, 1, 10, ... and the last step itself
  const log1p = (v) => Math.log10(1 + Math.max(v, 0));
  function stepTicks(xmax) {
    const ticks = [0];
    for (let t = 1; t < 0.8 * xmax; t *= 10) ticks.push(t);
    return [...ticks, xmax];
  }

  // an empty chart of W x H and add(tag, attrs, text) that appends an SVG element to it
  function svgChart(W, H) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("class", "chart");
    const add = (tag, attrs, text) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      svg.append(n);
      return n;
    };
    return { svg, add };
  }

  // series: [{label, color, dashed, x: [...], y: [...], lo: [...]?, hi: [...]?}]; logx: the steps axis above;
  // markers: [{x, text, bad}] vertical lines with a label, red where bad (a horizon the learned loss loses)
  function lineChart(container, { series, xlabel = "", ylabel = "", log = "auto", logx = false, markers = [] }) {
    const W = 560, H = 260, L = 58, R = 14, T = 12, B = 40;
    const pts = series.flatMap((s) => s.y.concat(s.lo || [], s.hi || [])).filter((v) => Number.isFinite(v));
    const xs = series.flatMap((s) => s.x);
    container.textContent = "";
    if (!pts.length || !xs.length) {
      container.append(el("p", { class: "muted chart-empty", text: "waiting for the first evaluation…" }));
      return;
    }
    let ymin = Math.min(...pts), ymax = Math.max(...pts);
    const useLog = log === true || (log === "auto" && ymin > 0 && ymax / ymin > 30);
    const ty = (v) => (useLog ? Math.log10(Math.max(v, 1e-30)) : v);
    ymin = ty(ymin); ymax = ty(ymax);
    if (ymax - ymin < 1e-12) { ymin -= 0.5 * (Math.abs(ymin) || 1); ymax += 0.5 * (Math.abs(ymax) || 1); }
    const pad = (ymax - ymin) * 0.06;
    ymin -= pad; ymax += pad;
    if (!useLog && ymin < 0 && Math.min(...pts) >= 0) ymin = 0;
    const xmin = Math.min(...xs), xmax = Math.max(...xs) === xmin ? xmin + 1 : Math.max(...xs);
    const tx = logx ? log1p : (v) => v;
    const X = (v) => L + ((tx(v) - tx(xmin)) / (tx(xmax) - tx(xmin))) * (W - L - R);
    const Y = (v) => T + (1 - (ty(v) - ymin) / (ymax - ymin)) * (H - T - B);
    const { svg, add } = svgChart(W, H);
    svg.dataset.xMax = xmax;
    const yt = useLog ? logTicks(ymin, ymax) : niceTicks(ymin, ymax);
    for (const t of yt) {
      const y = useLog ? T + (1 - (t - ymin) / (ymax - ymin)) * (H - T - B) : Y(t);
      add("line", { x1: L, x2: W - R, y1: y, y2: y, class: "grid" });
      add("text", { x: L - 6, y: y + 4, class: "tick", "text-anchor": "end" }, num(useLog ? 10 ** t : t));
    }
    for (const t of logx ? stepTicks(xmax) : niceTicks(xmin, xmax, 6)) {
      add("line", { x1: X(t), x2: X(t), y1: H - B, y2: H - B + 4, class: "axis" });
      add("text", { x: X(t), y: H - B + 17, class: "tick x-tick", "text-anchor": "middle" }, num(t));
    }
    for (const m of markers) {
      const cls = m.bad ? "bad" : "good";
      add("line", { x1: X(m.x), x2: X(m.x), y1: T, y2: H - B, class: `marker ${cls}` });
      add("text", { x: X(m.x) - 3, y: T + 10, class: `marker-label ${cls}`, "text-anchor": "end",
        "data-steps": m.x }, m.text);
    }
    add("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" });
    add("text", { x: (L + W - R) / 2, y: H - 4, class: "label", "text-anchor": "middle" }, xlabel);
    add("text", { x: 12, y: (T + H - B) / 2, class: "label", "text-anchor": "middle",
      transform: `rotate(-90 12 ${(T + H - B) / 2})` }, ylabel + (useLog ? " (log)" : ""));
    const path = (x, y) => x.map((v, i) => `${i ? "L" : "M"}${X(v).toFixed(1)},${Y(y[i]).toFixed(1)}`).join("");
    for (const s of series) {
      const ok = s.x.map((_, i) => Number.isFinite(s.y[i]));
      const x = s.x.filter((_, i) => ok[i]), y = s.y.filter((_, i) => ok[i]);
      if (s.lo && s.hi) {
        const lo = s.lo.filter((_, i) => ok[i]), hi = s.hi.filter((_, i) => ok[i]);
        if (hi.some((v, i) => v !== lo[i])) {
          const back = x.map((v, i) => `L${X(v).toFixed(1)},${Y(lo[i]).toFixed(1)}`).reverse().join("");
          add("path", { d: path(x, hi) + back + "Z", fill: s.color, "fill-opacity": 0.16, stroke: "none" });
        }
      }
      add("path", { d: path(x, y), fill: "none", stroke: s.color, "stroke-width": 2,
        "stroke-dasharray": s.dashed ? "6 4" : "none", "stroke-linejoin": "round" });
      if (x.length === 1) add("circle", { cx: X(x[0]), cy: Y(y[0]), r: 3, fill: s.color });
    }
    const legend = el("div", { class: "legend" }, series.map((s) =>
      el("span", {}, el("i", { class: s.dashed ? "dashed" : "", style: `border-color:${s.color}` }), s.label)));
    container.append(svg, legend);
  }

  // per-seed rows -> mean / min / max per column
  function band(rows) {
    const n = Math.max(...rows.map((r) => r.length));
    const col = (i) => rows.map((r) => r[i]).filter((v) => Number.isFinite(v));
    const stat = (f) => Array.from({ length: n }, (_, i) => (col(i).length ? f(col(i)) : NaN));
    return {
      y: stat((c) => c.reduce((a, b) => a + b, 0) / c.length),
      lo: stat((c) => Math.min(...c)),
      hi: stat((c) => Math.max(...c)),
    };
  }

  function thin(x, ...ys) {  // at most ~400 points per line
    const k = Math.ceil(x.length / 400);
    if (k <= 1) return [x, ...ys];
    const keep = (_, i) => i % k === 0 || i === x.length - 1;
    return [x.filter(keep), ...ys.map((y) => y.filter(keep))];
  }

  const METRIC_NAMES = { mse_heldout: "held-out MSE", mse_train: "train MSE", error_heldout: "held-out error",
    error_train: "train error", ce_heldout: "held-out cross-entropy", ce_train: "train cross-entropy" };
  const metricName = (m) => METRIC_NAMES[m] || m.replace(/_/g, " ");
  // the plain loss a learned one is compared with: cross-entropy for classification metrics, else MSE
  const plainName = (m) => (/(^|\.)(error|ce)_/.test(m) ? "cross-entropy" : "plain MSE");
  const HEADLINE = ["mse_heldout", "error_heldout"];

  // per horizon, the learned loss against the tuned baseline (ratio_vs_tuned): bad (red) above 1 or diverged
  const loses = (r) => r === null || r === undefined || r > 1;
  const ratioVerdicts = (report) => (report.horizon || []).filter((h) => "ratio_vs_tuned" in h).map((h) => ({
    x: h.steps, bad: loses(h.ratio_vs_tuned), text: h.ratio_vs_tuned === null ? "diverged" : `×${num(h.ratio_vs_tuned)}` }));

  // a meta-test report (ml3core.metatest): curves per metric and the horizon table
  function metaTestSection(container, report, note) {
    container.textContent = "";
    const grid = el("div", { class: "grid2" });
    const metrics = Object.keys(report.curves.learned || {}).sort((a, b) => HEADLINE.includes(b) - HEADLINE.includes(a));
    const steps = report.curve_steps;  // older reports: every step, index k = after k steps
    const verdicts = ratioVerdicts(report);
    for (const m of metrics) {
      const series = [];
      const plain = plainName(m).replace("plain ", "");
      for (const [name, label] of [["learned", "learned loss"], ["mse", `${plain}, same lr`],
        ["tuned", `${plain}, tuned: best lr per step count`]]) {
        const rows = (report.curves[name] || {})[m];
        if (!rows || !rows.length) continue;
        const b = band(rows);
        const [x, y, lo, hi] = thin(b.y.map((_, i) => (steps ? steps[i] : i)), b.y, b.lo, b.hi);
        series.push({ label, color: COLORS[name], dashed: name !== "learned", x, y,
          ...(name === "tuned" ? {} : { lo, hi }) });
      }
      const box = el("div", { class: "card chart-card", "data-metric": m },
        el("h3", { text: `${metricName(m)} on new tasks` }));
      const plot = el("div");
      box.append(plot);
      grid.append(box);
      lineChart(plot, { series, xlabel: "SGD steps (log scale)", ylabel: metricName(m), logx: true,
        markers: m === report.metric ? verdicts : [] });
    }
    const seeds = report.seed_ids ? report.seed_ids.length : 0;
    container.append(el("p", { class: "sub" }, `${report.tasks} new tasks per seed, ${seeds} seed${seeds === 1 ? "" : "s"}, `
      + `learning rate ${num(report.lr)}; line: mean, band: range over seeds. ${note || ""}`), grid);
    if (report.horizon && report.horizon.length) {
      const cols = Object.keys(report.horizon[0].learned || {}).filter((c) => HEADLINE.includes(c));
      const ratioCell = (r, key, steps) => el("td", { class: `num ${loses(r) ? "bad" : r < 1 ? "good" : ""}`,
        "data-ratio": key, "data-steps": steps, text: r === null ? "diverged" : num(r) });
      const ratios = [["ratio_vs_tuned", "vs tuned"], ["ratio_same_lr", "vs same lr"], ["ratio_both_tuned", "both tuned"]]
        .filter(([k]) => k in report.horizon[0]);
      const table = el("table", { class: "table", id: "horizon" },
        el("thead", {}, el("tr", {}, el("th", { text: "steps" }),
          cols.map((c) => [el("th", { text: `${metricName(c)}, learned` }),
            el("th", { text: `${plainName(c).replace("plain ", "")}, same lr` }),
            el("th", { text: `${plainName(c).replace("plain ", "")}, best lr` })]),
          ratios.map(([, label]) => el("th", { text: `ratio ${label}` })))),
        el("tbody", {}, report.horizon.map((h) => el("tr", {}, el("td", { text: h.steps }),
          cols.map((c) => [el("td", { class: "num", text: num(h.learned[c]) }), el("td", { class: "num", text: num(h.mse[c]) }),
            el("td", { class: "num", text: h.tuned ? `${num(h.tuned[c])} (lr ${(h.tuned_lr || []).map(num).join(", ")})` : "–" })]),
          ratios.map(([k]) => ratioCell(h[k], k, h.steps))))));
      container.append(el("div", { class: "card flush" },
        el("h3", { class: "pad", text: "Horizon report" }),
        el("p", { class: "hint pad" }, "Mean over seeds and tasks after each number of steps. Ratios of the held-out metric, "
          + "learned / plain (geometric mean over seeds): vs tuned = against the plain loss at its best learning rate for "
          + "that many steps (the standard; red where the learned loss loses), vs same lr = at the learned loss's own lr, "
          + "both tuned = each at its best lr (what the loss's shape alone is worth)."),
        table));
    }
  }

  document.addEventListener("DOMContentLoaded", initKeyBox);

  return { FINAL, $, el, api, request, ApiError, blobUrl, loadImage, follow, notice, num, duration, ago, when,
    runTime, badge, progressBar, setProgress, percent, getKey, versionHref, clearErrors, showErrors, lineChart, svgChart, band, thin, COLORS,
    metricName, plainName, metaTestSection, sleep, loses };
})();
