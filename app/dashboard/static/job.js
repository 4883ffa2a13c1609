// One job: live progress and meta-training curves from its event stream, then its report and figures.
"use strict";

(() => {
  const { $, el, api, num, duration, runTime, when, FINAL } = ml3;
  const id = $("#job").dataset.jobId;
  let job = null;
  let trainSeconds = null;  // how long meta-training took, once a later phase (meta-test, figures) began
  const curves = new Map();  // "group.metric" -> {x: [iteration], rows: [[value per seed]], baseline: [per seed]}
  const GROUPS = { train_task: "meta-train task", validation: "meta-validation tasks" };

  // -- the job itself ------------------------------------------------------------------------------------
  function summary() {
    const s = job.spec || {};
    if (job.kind === "meta-test") return `Meta-test of ${s.loss} against plain MSE`;
    const plan = [`${(s.task || {}).family} family`];
    if (s.seeds) plan.push(`${s.seeds} seed${s.seeds === 1 ? "" : "s"}`);
    plan.push(`${job.progress.total} outer iterations`);
    plan.push(`registers as ${s.register_as || (s.task || {}).family}`);
    return plan.join(" · ");
  }

  // a running training job past meta-training shows its current phase (meta-test, figures) instead
  function renderProgress() {
    const later = job.status === "running" && job.phase ? job.phase : null;
    const p = later || job.progress;
    const pct = ml3.setProgress($("#progress"), p.completed, p.total);
    const phase = p.phase && (later || job.kind === "meta-test") ? `${p.phase}: ` : "";
    $("#progress-text").textContent = `${phase}${p.completed} / ${p.total} ${p.unit} · ${pct}%`;
    const t = runTime(job);
    let eta = "";
    if (!later && job.status === "running" && p.completed > 0 && p.completed < p.total && t) {
      eta = `about ${duration((t / p.completed) * (p.total - p.completed))} left`;
    }
    $("#progress-eta").textContent = eta;
  }

  const fact = (label, value) => el("div", {}, el("dt", { text: label }), el("dd", {}, value));

  function renderTimings() {
    const t = runTime(job), p = job.progress, m = job.metrics || {};
    const items = [
      fact("Submitted", when(job.created_at)),
      fact("Started", when(job.started_at)),
      fact("Finished", when(job.finished_at)),
      fact("Run time", duration(t)),
    ];
    const trained = trainSeconds || t;  // speed of meta-training only
    if (trained && p.completed && job.kind === "meta-train") items.push(fact("Speed", `${num(p.completed / trained)} it/s`));
    if (m.meta_loss !== undefined) items.push(fact("Meta-loss", num(m.meta_loss)));
    if (job.attempts > 1) items.push(fact("Attempts", job.attempts));
    if (job.checkpoint) items.push(fact("Checkpoint", `iteration ${job.checkpoint}`));
    $("#timings").replaceChildren(...items);
  }

  function render() {
    const badge = $("#job-status");
    badge.className = `badge ${job.status}`;
    badge.textContent = job.status;
    $("#job-summary").textContent = summary();
    const cancel = $("#cancel");
    cancel.hidden = FINAL.includes(job.status);
    cancel.disabled = job.cancel_requested;
    cancel.textContent = job.cancel_requested ? "Canceling…" : "Cancel job";
    const err = $("#job-error");
    err.hidden = !job.error;
    if (job.error) {
      err.replaceChildren(el("strong", { text: `The job failed: ${job.error.code}` }),
        el("pre", { class: "plain", text: job.error.detail }));
    }
    renderProgress();
    renderTimings();
    $("#job-spec").textContent = JSON.stringify(job.spec, null, 2);
    document.title = `Job ${id} · ${job.status} · ml3`;
  }

  async function load() {
    try {
      job = await api(`/v1/jobs/${id}`);
      if (job.kind === "sweep") location.replace(`/sweeps/${id}`);  // its own page: trials and leaderboard
      trainSeconds = (job.metrics && job.metrics.meta_train_seconds) || trainSeconds;
    } catch (e) {
      $("#job-error").hidden = false;
      $("#job-error").textContent = e.status === 404 ? `There is no job ${id}.` : `Could not load job ${id}: ${e.message}`;
      throw e;
    }
    render();
  }

  // -- meta-training curves ------------------------------------------------------------------------------
  function addMetrics(data) {
    const per = data.per_seed || Object.fromEntries(  // jobs run before per-seed values: means only
      Object.entries(data).filter(([k, v]) => k.includes(".") && typeof v === "number").map(([k, v]) => [k, [v]]));
    for (const [key, values] of Object.entries(per)) {
      if (key.endsWith(".mse_baseline")) continue;
      if (!curves.has(key)) curves.set(key, { x: [], rows: [], baseline: null });
      const c = curves.get(key);
      const at = c.x.indexOf(data.iteration);  // a resumed job reports an iteration again
      if (at >= 0) c.rows[at] = values;
      else { c.x.push(data.iteration); c.rows.push(values); }
      c.baseline = per[`${key}.mse_baseline`] || c.baseline;
    }
    scheduleDraw();
  }

  function fromHistory(history) {
    curves.clear();
    history.iteration.forEach((iteration, i) => {
      const per_seed = {};
      for (const [group, metrics] of Object.entries(history.eval)) {
        for (const [m, rows] of Object.entries(metrics)) {
          per_seed[`${group}.${m}`] = rows[i];
          per_seed[`${group}.${m}.mse_baseline`] = history.baseline[group][m];
        }
      }
      addMetrics({ iteration, per_seed });
    });
  }

  const rank = (key) => (/(mse|error)_heldout$/.test(key) ? 0 : /(mse|error)_train$/.test(key) ? 1 : 2) * 2
    + (key.startsWith("validation") ? 0 : 1);

  let pending = false;
  function scheduleDraw() {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; draw(); }, 150);
  }

  function draw() {
    if (!curves.size) return;
    $("#curves-section").hidden = false;
    $("#eval-steps").textContent = (job.spec && job.spec.eval_steps) || "eval_steps";
    const box = $("#curves");
    for (const key of [...curves.keys()].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))) {
      let card = box.querySelector(`[data-curve="${CSS.escape(key)}"]`);
      if (!card) {
        const [group, metric] = [key.split(".")[0], key.split(".").slice(1).join(".")];
        card = el("div", { class: "card chart-card", "data-curve": key },
          el("h3", {}, ml3.metricName(metric), el("span", { class: "muted", text: ` · ${GROUPS[group] || group}` })),
          el("div", { class: "plot" }));
        box.append(card);
      }
      const c = curves.get(key);
      const seeds = Math.max(...c.rows.map((r) => r.length));
      const learned = ml3.band(Array.from({ length: seeds }, (_, s) => c.rows.map((r) => r[s])));
      const series = [{ label: "learned loss", color: ml3.COLORS.learned, x: c.x, ...learned }];
      if (c.baseline) {
        const b = ml3.band(c.baseline.map((v) => [v]));
        const k = c.x.length;
        series.push({ label: ml3.plainName(key), color: ml3.COLORS.mse, dashed: true, x: c.x,
          y: Array(k).fill(b.y[0]), lo: Array(k).fill(Math.min(...b.lo)), hi: Array(k).fill(Math.max(...b.hi)) });
      }
      ml3.lineChart(card.querySelector(".plot"), { series, xlabel: "meta-train iteration", ylabel: ml3.metricName(key.split(".").slice(1).join(".")) });
    }
  }

  // -- a finished job: result, report, figures -------------------------------------------------------------
  function renderResult(report) {
    const box = $("#result"), r = job.result || {};
    box.textContent = "";
    if (job.status === "canceled") {
      box.append(el("p", {}, `Canceled at iteration ${job.progress.completed}.`,
        job.checkpoint ? ` The checkpoint of iteration ${job.checkpoint} is kept.` : ""));
    } else if (job.kind === "meta-train" && r.name) {
      const href = ml3.versionHref(r.name, r.version);
      box.append(el("div", { class: "result-line" },
        el("div", {}, el("span", { class: "muted", text: "Registered as " }), el("a", { href, class: "big-link", id: "result-loss", text: r.loss }),
          r.published_seed !== undefined ? el("span", { class: "muted", text: ` · published seed ${r.published_seed} (best on meta-validation)` }) : ""),
        el("a", { class: "btn primary", href, text: "Open the loss" })));
      if (report && report.validation && report.validation.worst_ratio) {
        const v = report.validation, i = v.chosen_index;
        box.append(el("p", { class: "hint" }, `Published by the ${v.metric}: ${num(v.worst_ratio[i])}.`));
      }
    } else if (job.kind === "meta-train" && job.status === "succeeded" && r.loss === null) {
      box.append(el("p", { id: "result-nothing" }, "Nothing was published."));
    } else if (job.kind === "meta-test" && r.loss) {
      const [name, version] = r.loss.split(":");
      box.append(el("p", {}, "Meta-test of ", el("a", { href: ml3.versionHref(name, version), text: r.loss })));
    }
    for (const w of r.warnings || []) {  // where the loss is worse than the baseline: said, not hidden
      box.append(el("p", { class: "error-text warning", text: `Warning: ${w}` }));
    }
    box.hidden = !box.childNodes.length;
  }

  // the curves this page draws itself (charted) are not shown again as pictures: a link to each PNG
  async function showFigures(charted) {
    const figures = (job.links && job.links.figures) || {};
    const box = $("#figures");
    box.textContent = "";
    const links = Object.entries(figures).filter(([name]) => charted(name));
    for (const [name, url] of Object.entries(figures).filter(([name]) => !charted(name))) {
      const img = el("img", { class: "figure", alt: name, "data-figure": name });
      const card = el("figure", { class: "card" }, img, el("figcaption", { text: name }));
      box.append(card);
      ml3.loadImage(img, url).then(() => {
        card.classList.toggle("wide", img.naturalWidth > 1.6 * img.naturalHeight);
        img.addEventListener("click", () => window.open(img.src, "_blank"));
      }).catch((e) => card.append(el("p", { class: "error-text", text: e.message })));
    }
    const pngs = $("#figure-links");
    pngs.replaceChildren(...(links.length ? ["The curves above as PNG: "] : []), ...links.flatMap(([name, url], i) => [
      i ? ", " : "", el("a", { href: "#", "data-figure-link": name, text: name, onclick: (e) => {
        e.preventDefault();
        ml3.blobUrl(url).then((href) => window.open(href, "_blank"));
      } })]));
    pngs.hidden = !links.length;
    $("#figures-section").hidden = !box.childNodes.length && !links.length;
  }

  // metricsShown: the curves came live through the events; otherwise a training job's report has
  // them all (its history), and only a job without one needs the stored metrics
  async function finish(metricsShown) {
    let report = null;
    if (job.status === "succeeded" && job.links && job.links.report) {
      report = await api(job.links.report).catch(() => null);
    }
    if (report && report.history) fromHistory(report.history);
    else if (!metricsShown) (await api(`/v1/jobs/${id}/metrics`)).items.forEach(addMetrics);
    const test = report && (report.meta_test || (report.curves ? report : null));
    if (test) {
      $("#metatest-section").hidden = false;
      const note = job.kind === "meta-train" ? `Each seed's learned loss is tested; the published one is seed ${report.published_seed}.` : "";
      ml3.metaTestSection($("#metatest"), test, note);
    }
    renderResult(report);
    const drawn = (name) => (name === "meta_train.png" && curves.size > 0)
      || (test && (name.startsWith("meta_test") || name === "inertia_error.png"));
    await showFigures(drawn);
  }

  // -- live ------------------------------------------------------------------------------------------------
  function onEvent(type, data) {
    if (type === "progress") {
      if (job.kind === "meta-train" && data.phase && data.phase !== "meta-train") {
        if (trainSeconds === null && job.status === "running") trainSeconds = runTime(job);
        job.phase = data;
      } else job.progress = { ...job.progress, ...data };
      if (job.status === "queued") job.status = "running";
      renderProgress();
      renderTimings();
    } else if (type === "metrics") {
      job.metrics = data;
      addMetrics(data);
    } else if (type === "status") {
      job.status = data.status;
      if (data.status === "running" && !job.started_at) job.started_at = new Date().toISOString();
      if (data.error) job.error = data.error;
      render();
    }
  }

  $("#cancel").addEventListener("click", async () => {
    $("#cancel").disabled = true;
    try {
      job = { ...job, ...(await api(`/v1/jobs/${id}/cancel`, { method: "POST" })) };
      render();
    } catch (e) {
      ml3.notice(`Could not cancel: ${e.message}`, "error");
      $("#cancel").disabled = false;
    }
  });

  (async () => {
    await load();
    const live = !FINAL.includes(job.status);
    if (live) {
      const ticker = setInterval(() => job.status === "running" && (renderProgress(), renderTimings()), 1000);
      await ml3.follow(`/v1/jobs/${id}/events`, onEvent, () => FINAL.includes(job.status))
        .catch((e) => ml3.notice(`Live updates stopped: ${e.message}`, "error"));
      clearInterval(ticker);
      await load();
    }
    await finish(live);
  })();
})();
