// The loss registry: the list of losses, a loss's versions, and one version (use, landscape,
// evaluate, meta-test against MSE, aliases and tags).
"use strict";

(() => {
  const { $, el, api, num, ago, when } = ml3;
  const enc = encodeURIComponent;
  const versionHref = ml3.versionHref;
  const chip = (text, cls = "chip") => el("span", { class: cls, text });
  const none = () => el("span", { class: "muted", text: "–" });

  // a paged table: load(cursor) -> {items, next_cursor}; "more" appends the next page
  async function pagedTable(tbody, button, load, row) {
    let cursor = null;
    const next = async () => {
      const page = await load(cursor);
      tbody.append(...page.items.map(row));
      cursor = page.next_cursor;
      button.hidden = !cursor;
      return page.items.length;
    };
    button.addEventListener("click", next);
    return next();
  }

  // -- /losses ------------------------------------------------------------------------------------------
  async function lossesPage() {
    const row = (l) => el("tr", {},
      el("td", {}, el("a", { href: `/losses/${enc(l.name)}`, class: "strong", text: l.name })),
      el("td", {}, l.latest_version ? el("a", { href: versionHref(l.name, l.latest_version), text: `v${l.latest_version}` }) : "–"),
      el("td", {}, Object.keys(l.aliases).length ? Object.entries(l.aliases).map(([a, v]) =>
        el("a", { class: "chip alias", href: versionHref(l.name, v), text: `@${a} → v${v}` })) : none()),
      el("td", { title: when(l.created_at), text: ago(l.created_at) }));
    const n = await pagedTable($("#losses tbody"), $("#losses-more"),
      (c) => api(`/v1/losses?limit=50${c ? `&cursor=${enc(c)}` : ""}`), row);
    $("#losses-empty").hidden = n > 0;
  }

  // -- /losses/{name} ---------------------------------------------------------------------------------------
  function validation(m) {
    if (!m || m.validation_heldout_mse === undefined) return "–";
    const better = m.validation_heldout_mse < m.validation_heldout_mse_baseline;
    return el("span", { class: better ? "good" : "bad" }, `${num(m.validation_heldout_mse)} / ${num(m.validation_heldout_mse_baseline)}`);
  }

  async function lossPage(root) {
    const name = root.dataset.name;
    const row = (v) => el("tr", {},
      el("td", {}, el("a", { href: versionHref(name, v.version), class: "strong", text: `v${v.version}` })),
      el("td", {}, v.aliases.length ? v.aliases.map((a) => chip(`@${a}`, "chip alias")) : none()),
      el("td", {}, Object.keys(v.tags).length ? Object.entries(v.tags).map(([k, t]) => chip(`${k}=${t}`)) : none()),
      el("td", {}, (v.task || {}).family || "–"),
      el("td", { class: "num" }, validation(v.metrics)),
      el("td", { class: v.verdict ? (v.verdict.startsWith("beats") ? "good" : "bad") : "muted", text: v.verdict || "–" }),
      el("td", {}, v.job_id ? el("a", { href: `/jobs/${v.job_id}`, text: `#${v.job_id}` }) : "–"),
      el("td", { title: when(v.created_at), text: ago(v.created_at) }));
    try {
      await pagedTable($("#versions tbody"), $("#versions-more"),
        (c) => api(`/v1/losses/${enc(name)}/versions?limit=50${c ? `&cursor=${enc(c)}` : ""}`), row);
      const aliases = (await api(`/v1/losses/${enc(name)}/aliases`)).aliases;
      const list = Object.entries(aliases).map(([a, v]) => `@${a} → v${v}`).join(", ");
      $("#loss-summary").textContent = list ? `Aliases: ${list}` : "No aliases yet: set one on a version's page.";
    } catch (e) {
      $("#loss-summary").textContent = e.message;
    }
  }

  // -- /losses/{name}/versions/{v} ----------------------------------------------------------------------------
  async function versionPage(root) {
    const name = root.dataset.name, version = root.dataset.version;
    const ref = `${name}:${version}`, base = `/v1/losses/${enc(ref)}`;
    let v;
    try {
      v = await api(base);
    } catch (e) {
      $("#version-summary").textContent = e.status === 404 ? `${ref} is not in the registry.` : e.message;
      return;
    }
    const task = v.task || {}, training = v.training || {}, arch = v.architecture || {};
    $("#version-summary").replaceChildren(
      `${task.family || "?"} family · seed ${training.seed ?? "?"} · registered ${when(v.created_at)} · `,
      v.job_id ? el("a", { href: `/jobs/${v.job_id}`, text: `job #${v.job_id}` }) : "no job",
      " · sha256 ", el("code", { title: v.sha256, text: v.sha256.slice(0, 12) }),
      el("br"), "Verdict on meta-validation tasks: ",
      el("strong", { id: "verdict", class: v.verdict ? (v.verdict.startsWith("beats") ? "good" : "bad") : "muted",
        text: v.verdict || "not recorded (registered before verdicts)" }));
    $("#version-spec").textContent = JSON.stringify({ architecture: arch, task, training, metrics: v.metrics }, null, 2);

    // use it
    const line = `from ml3core import load_loss; loss_fn = load_loss("${location.origin}/v1/losses/${ref}")`;
    $("#python-line").textContent = line;
    $("#copy-line").addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(line); } catch { /* http origins may forbid it */ }
      $("#copy-line").textContent = "Copied";
      setTimeout(() => { $("#copy-line").textContent = "Copy"; }, 1500);
    });
    $("#download").addEventListener("click", async (e) => {
      if (!ml3.getKey()) return;  // a plain link works without a key
      e.preventDefault();
      const a = el("a", { href: await ml3.blobUrl(`${base}/artifact`), download: `${name}-v${version}.zip` });
      document.body.append(a);
      a.click();
      a.remove();
    });

    // landscape
    ml3.loadImage($("#landscape"), `${base}/landscape?format=png`)
      .catch((e) => { $("#landscape-note").textContent = `No landscape: ${e.message}`; });
    const classification = arch.form === "ce_classwise" || arch.form === "weighted_ce";
    $("#landscape-note").textContent = classification
      ? "The learned loss of one example against the true class's logit margin, beside cross-entropy."
      : "The learned loss over a grid, beside MSE, as its task family draws it.";

    // evaluate
    const inputs = arch.inputs || [];
    if (inputs.includes("x")) {
      $("#ev-x-field").hidden = false;
      $("#ev-x").value = "0, 0, 0";
    }
    const form = $("#evaluate");
    // a classification loss takes logits (rows separated by ';') and class labels in the same two fields
    const names = classification ? { pred: "logits", target: "labels", x: "x" } : { pred: "pred", target: "target", x: "x" };
    if (classification) {
      for (const [k, label, value] of [["pred", "logits (one row per example, rows separated by ;)", "2, 0.1, -1; 0.3, 0.2, 1"],
                                       ["target", "labels (class indices)", "0, 2"]]) {
        const box = form.querySelector(`.field[data-loc="${k}"]`);
        box.dataset.loc = names[k];
        box.querySelector("label").textContent = label;
        form.elements[k].value = value;
      }
    }
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      ml3.clearErrors(form);
      const q = new URLSearchParams();
      for (const k of ["pred", "target", "x"]) {
        const text = form.elements[k].value.replace(/\s+/g, "");
        if (k !== "x" || (!$("#ev-x-field").hidden && text)) q.set(names[k], text);
      }
      q.set("reduction", form.elements.reduction.value);
      if (form.elements.return_grad.checked) q.set("return_grad", "true");
      const out = $("#eval-result");
      try {
        const r = await api(`${base}/evaluate?${q}`);
        const show = (x) => (Array.isArray(x) ? `[${x.map(show).join(", ")}]` : num(x));
        out.replaceChildren(
          el("div", {}, el("span", { class: "muted", text: "loss " }), el("strong", { id: "eval-loss", "data-value": JSON.stringify(r.loss), text: show(r.loss) })),
          r.grad ? el("div", {}, el("span", { class: "muted", text: `d loss / d ${names.pred} ` }), el("span", { text: show(r.grad) })) : "",
          el("div", { class: "hint" }, `${r.n} point${r.n === 1 ? "" : "s"} · ${r.id}`));
        out.hidden = false;
      } catch (err) {
        out.hidden = true;
        ml3.showErrors(form, err);
      }
    });

    // meta-test curves against MSE, from the job that produced this version
    if (v.job_id) {
      api(`/v1/jobs/${v.job_id}/report`).then((report) => {
        if (!report.meta_test) return;
        $("#metatest-section").hidden = false;
        ml3.metaTestSection($("#metatest"), report.meta_test,
          `From job #${v.job_id}: every seed's learned loss; this version is seed ${report.published_seed}.`);
      }).catch(() => {});
    }

    // aliases and tags
    function renderLabels() {
      $("#aliases-inline").replaceChildren(...v.aliases.map((a) => chip(`@${a}`, "chip alias")));
      $("#aliases").replaceChildren(...(v.aliases.length ? v.aliases.map((a) => el("li", {},
        el("code", { text: `${name}@${a}` }),
        el("button", { class: "btn ghost small", type: "button", text: "Remove", onclick: () =>
          change(`/v1/losses/${enc(name)}/aliases/${enc(a)}`, "DELETE", undefined, $("#alias-form")) })))
        : [el("li", { class: "muted", text: "none" })]));
      const tags = Object.entries(v.tags);
      $("#tags").replaceChildren(...(tags.length ? tags.map(([k, t]) => el("li", {},
        el("span", {}, el("strong", { text: k }), ` = ${t}`),
        el("button", { class: "btn ghost small", type: "button", text: "Remove", onclick: () =>
          change(`${base}/tags/${enc(k)}`, "DELETE", undefined, $("#tag-form")) })))
        : [el("li", { class: "muted", text: "none" })]));
    }

    async function change(path, method, body, form) {
      ml3.clearErrors(form);
      try {
        await api(path, { method, body });
        v = await api(base);
        form.reset();
        renderLabels();
      } catch (err) {
        ml3.showErrors(form, err);
      }
    }

    $("#alias-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const alias = e.target.elements.alias.value.trim();
      if (!alias) return;
      change(`/v1/losses/${enc(name)}/aliases/${enc(alias)}`, "PUT", { version: Number(version) }, e.target);
    });
    $("#tag-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const f = e.target.elements;
      if (!f.key.value.trim()) return;
      change(`${base}/tags/${enc(f.key.value.trim())}`, "PUT", { value: f.value.value }, e.target);
    });
    renderLabels();
  }

  const page = $("#version") || $("#loss") || $("#losses");
  ({ version: versionPage, loss: lossPage, losses: lossesPage })[page.id](page);
})();
