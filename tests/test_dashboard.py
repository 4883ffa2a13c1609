"""The dashboard. Server-side: the pages and the submit form built generically from each task family.
In a browser (headless Chromium driven by Playwright, the system browser, no download): a real
``ml3 serve`` process; submit a job through the form, watch it to 100% live, open the registered
loss, see its landscape, evaluate it, download it, cancel a job; screenshots go to $ML3_CI_ARTIFACTS."""

import dataclasses
import io
import os
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest
import torch
from conftest import ROOT, require_service

from app.core.config import Settings
from app.dashboard.views import family_form
from ml3core import load_loss
from ml3core.api import parse_spec
from ml3core.engine import Hooks, MetaTrainer
from ml3core.losses import LossSpec
from ml3core.metatest import MetaTestConfig
from ml3core.tasks import FAMILIES, make_family
from ml3core.train_config import TrainConfig

CHROMIUM = os.environ.get("ML3_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("ML3_CI_ARTIFACTS") or ROOT / "ci-artifacts")


# -- server side: no browser needed ---------------------------------------------------------------
@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    """The app of conftest's ``client``: no job runner, the pages need none."""
    return Settings(data_dir=tmp_path_factory.mktemp("dash"), runner="none")


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - {"dataset"}))
def test_form_fields_and_defaults_come_from_the_family(name):
    form = family_form(name)
    plan = parse_spec({"task": {"family": name}}).to_dict()
    task, train, meta_test, loss = form["sections"]
    config_fields = [f.name for f in dataclasses.fields(FAMILIES[name].config_cls)]
    assert [f["name"] for f in task["fields"]] == config_fields
    assert {f["name"]: f["default"] for f in task["fields"]} == {k: plan["task"][k] for k in config_fields}
    assert {f["loc"]: f["default"] for f in train["fields"]} == {
        k: v for k, v in plan.items() if k not in ("task", "loss", "meta_test")}
    assert {f["name"]: f["default"] for f in meta_test["fields"]} == plan["meta_test"]
    assert all(f["loc"] == f"loss.{f['name']}" and f["default"] == plan["loss"][f["name"]]
               for f in loss["fields"])
    assert {"pred_dim", "x_dim"}.isdisjoint(f["name"] for f in loss["fields"])  # the family sets them


def test_a_family_with_a_required_field_still_gets_its_form():
    """The dataset family has no spec without a data set id: its form starts from dataclass defaults."""
    form = family_form("dataset")
    task = {f["name"]: f["default"] for f in form["sections"][0]["fields"]}
    assert task["dataset"] is None or task["dataset"] == ""
    assert {f["name"]: f["default"] for f in form["sections"][2]["fields"]} == dataclasses.asdict(MetaTestConfig())


def test_a_new_family_gets_its_form_without_dashboard_code(client):
    @dataclasses.dataclass
    class WaveConfig:
        speed: float = 2.5
        sizes: list[int] = dataclasses.field(default_factory=lambda: [3, 4])
        beta: float = 1.0

    base = FAMILIES["sine"]
    wave = type("WaveFamily", (base,), {"name": "wave-test", "config_cls": WaveConfig, "__doc__": "Waves."})
    FAMILIES["wave-test"] = wave
    try:
        html = client.get("/submit").text
    finally:
        del FAMILIES["wave-test"]
    assert 'data-family="wave-test"' in html and "Waves." in html
    assert 'name="task.speed"' in html and 'data-type="float"' in html and 'value="2.5"' in html
    assert 'name="task.sizes"' in html and 'data-type="list[int]"' in html and 'value="3, 4"' in html
    assert 'data-family="wave-test"' not in client.get("/submit").text


def test_progress_metrics_carry_every_seed_for_the_bands():
    family = make_family({"family": "sine", "points": 10, "heldout_points": 10})
    cfg = TrainConfig(seeds=3, outer_iterations=4, eval_every=2, eval_steps=3, validation_tasks=2)
    seen = []
    MetaTrainer(family, LossSpec.from_dict({"hidden": [4]}, **family.loss_defaults()), cfg).run(
        Hooks(on_progress=lambda done, total, m: seen.append(m), progress_every=2))
    assert [m["iteration"] for m in seen] == [2, 4]
    for m in seen:
        assert set(m["per_seed"]) == {k for k in m if "." in k}  # one list per mean
        for key, values in m["per_seed"].items():
            assert len(values) == 3 and m[key] == pytest.approx(sum(values) / 3)
    assert seen[0]["per_seed"]["validation.mse_heldout"] != seen[1]["per_seed"]["validation.mse_heldout"]


def test_pages_and_static_files(client):
    for path, marker in [("/", 'id="jobs"'), ("/jobs/7", 'data-job-id="7"'), ("/losses", 'id="losses"'),
                         ("/losses/my-loss", 'data-name="my-loss"'),
                         ("/losses/my-loss/versions/3", 'data-version="3"')]:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert marker in r.text and 'src="/static/common.js"' in r.text and "https://" not in r.text
    assert client.get("/static/common.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/dashboard.css").headers["content-type"].startswith("text/css")
    for bad in ("/static/missing.js", "/static/..%2Fviews.py"):
        r = client.get(bad)
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    r = client.get("/jobs/first")
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    assert "/" not in client.get("/openapi.json").json()["paths"]  # pages are not API


def test_a_name_is_escaped_in_the_page(client):
    html = client.get("/losses/%3Cimg%20src=x%20onerror=alert(1)%3E").text
    assert "<img src=x onerror" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_api_docs_reference_no_external_host(client):
    """/docs and /redoc load Swagger UI and ReDoc from this server (fastapi-offline), not a CDN."""
    import re

    for path, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = client.get(path).text
        refs = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html)
        assert any(r.endswith(asset) for r in refs), (path, refs)
        assert all(r.startswith("/") for r in refs), (path, refs)  # same host, every one
        assert not re.search(r"https?://", html), path
        for ref in refs:
            assert client.get(ref).status_code == 200, ref


# -- in a browser ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        require_service("playwright", f"pip install playwright (the Python package only): {e}")
    if not shutil.which(CHROMIUM):
        require_service("chromium", f"{CHROMIUM} not found: apt-get install chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    p = context.new_page()
    p.set_default_timeout(30_000)
    p.errors = []
    p.on("pageerror", lambda e: p.errors.append(str(e)))
    yield p
    context.close()
    assert not p.errors, p.errors  # no JavaScript error on any page


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def field(page, loc: str):
    return page.locator(f'form.job-form:not([hidden]) .field[data-loc="{loc}"]')


def test_submit_watch_inspect_evaluate_download(page, server):
    page.goto(server.url + "/")
    page.get_by_text("No jobs yet").wait_for()
    page.get_by_role("link", name="New job").first.click()
    page.wait_for_url("**/submit?family=sine")
    assert field(page, "seeds").locator("input").input_value() == "5"  # the defaults are filled in

    # a bad value: the API's message appears next to its field, and no job is made
    for loc, value in {"seeds": "0", "outer_iterations": "40", "eval_every": "10", "eval_steps": "10",
                       "inner_steps": "5", "train_horizon": "100", "validation_tasks": "4",
                       "meta_test.steps": "10", "meta_test.horizons": "10"}.items():
        field(page, loc).locator("input").fill(value)
    page.locator("form.job-form:not([hidden]) [name=register_as]").fill("browser-sine")
    page.get_by_role("button", name="Submit job").click()
    error = field(page, "seeds").locator(".field-error")
    error.wait_for()
    assert "[1, 100000]" in error.inner_text() and "got 0" in error.inner_text()
    assert httpx.get(f"{server.url}/v1/jobs").json()["items"] == []
    shot(page, "dashboard-submit-error.png")

    field(page, "seeds").locator("input").fill("2")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url("**/jobs/1")
    page.evaluate("""() => {
        window.__sameDocument = true;
        window.__seen = [];
        const bar = document.querySelector('#progress');
        new MutationObserver(() => window.__seen.push(+bar.getAttribute('aria-valuenow')))
            .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
    }""")
    page.wait_for_selector('#progress[aria-valuenow="100"]', timeout=240_000)
    page.wait_for_selector("#job-status.succeeded", timeout=120_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload: the stream moved the bar
    seen = page.evaluate("window.__seen")
    assert any(0 < v < 100 for v in seen) and seen[-1] == 100, seen
    assert "40 / 40 iterations · 100%" in page.inner_text(".progress-head")
    spec = httpx.get(f"{server.url}/v1/jobs/1").json()["spec"]  # only the changed fields were sent
    assert spec == {"kind": "meta-train", "task": {"family": "sine"}, "seeds": 2, "outer_iterations": 40,
                    "eval_steps": 10, "inner_steps": 5, "train_horizon": 100, "validation_tasks": 4,
                    "meta_test": {"steps": 10, "horizons": [10]}, "register_as": "browser-sine"}

    # curves with a band over the two seeds, the horizon report; the PNGs of those curves only as links
    # (one picture per result)
    chart = page.locator('[data-curve="validation.mse_heldout"] svg')
    chart.wait_for()
    assert chart.locator("path[fill-opacity]").count() >= 1  # the seed band
    page.locator("#horizon tbody tr").first.wait_for()
    assert page.locator("#horizon tbody tr").count() == 1
    heads = [h.lower() for h in page.locator("#horizon thead th").all_text_contents()]  # tuned and three ratios
    assert {"ratio vs tuned", "ratio vs same lr", "ratio both tuned"} <= set(heads)
    assert any("best lr" in h for h in heads)
    page.locator("#figure-links a").first.wait_for()
    links = page.locator("#figure-links a[data-figure-link]")
    assert sorted(links.nth(i).get_attribute("data-figure-link") for i in range(links.count())) == [
        "meta_test.png", "meta_train.png"]
    assert page.locator("img[data-figure]").count() == 0
    assert page.locator("#metatest .chart-card").count() >= 1
    shot(page, "dashboard-job.png")

    page.locator("#result-loss").click()
    page.wait_for_url("**/losses/browser-sine/versions/1")
    page.wait_for_function("() => { const i = document.querySelector('#landscape'); "
                           "return i.complete && i.naturalWidth > 0; }")
    line = page.inner_text("#python-line")
    url = f"{server.url}/v1/losses/browser-sine:1"
    verdict = page.inner_text("#verdict")  # the registry's verdict against the tuned baseline
    assert verdict == httpx.get(url).json()["verdict"] and verdict.startswith(("beats a tuned", "no gain"))
    assert line == f'from ml3core import load_loss; loss_fn = load_loss("{url}")'

    # evaluate: the number shown is what the loss loaded by that line computes
    page.fill("#ev-pred", "0.1, 0.5, -2")
    page.fill("#ev-target", "0, 1, 1")
    page.get_by_role("button", name="Evaluate").click()
    shown = float(page.locator("#eval-loss").get_attribute("data-value"))
    loss_fn = load_loss(url)
    expected = float(loss_fn(torch.tensor([0.1, 0.5, -2.0]), torch.tensor([0.0, 1.0, 1.0])))
    assert shown == pytest.approx(expected, rel=1e-6)
    page.fill("#ev-pred", "0.1, oops")
    page.get_by_role("button", name="Evaluate").click()
    bad = page.locator('#evaluate .field[data-loc="pred"] .field-error')
    bad.wait_for()
    assert "comma-separated numbers" in bad.inner_text()
    page.fill("#ev-pred", "0.1, 0.5, -2")
    page.get_by_role("button", name="Evaluate").click()
    page.locator("#eval-result").wait_for()
    page.locator("#metatest #horizon").wait_for()

    with page.expect_download() as download:
        page.get_by_role("link", name="Download bundle").click()
    data = Path(download.value.path()).read_bytes()
    assert sorted(zipfile.ZipFile(io.BytesIO(data)).namelist()) == ["loss.json", "loss.safetensors"]
    assert load_loss(data).spec["weights_sha256"] == loss_fn.spec["weights_sha256"]
    shot(page, "dashboard-loss.png")


def test_api_docs_render_with_no_network(browser, server):
    """Swagger UI and ReDoc draw the API in Chromium while every request to another host fails."""
    context = browser.new_context()
    outside = []

    def only_local(route):
        if route.request.url.startswith(server.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context.route("**/*", only_local)
    p = context.new_page()
    errors = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    try:
        p.goto(server.url + "/docs")
        p.locator(".swagger-ui .opblock-summary-path", has_text="/v1/jobs").first.wait_for(timeout=30_000)
        assert p.locator(".swagger-ui .opblock").count() > 20
        shot(p, "api-docs.png")
        p.goto(server.url + "/redoc")
        p.locator("h2", has_text="Submit a meta-train job").first.wait_for(timeout=30_000)
        shot(p, "api-redoc.png")
    finally:
        context.close()
    assert outside == [] and errors == [], (outside, errors)


def test_alias_tag_and_the_key_sent_with_every_request(page, server):
    page.goto(server.url + "/losses/browser-sine/versions/1")
    page.fill("#alias-form [name=alias]", "production")
    page.get_by_role("button", name="Point here").click()
    page.locator("#aliases code", has_text="browser-sine@production").wait_for()
    assert httpx.get(f"{server.url}/v1/losses/browser-sine/aliases").json()["aliases"] == {"production": 1}
    page.fill("#tag-form [name=key]", "bad key!")
    page.fill("#tag-form [name=value]", "x")
    page.get_by_role("button", name="Set tag").click()
    page.locator("#tag-form + .alert").wait_for()  # the API's refusal, shown beside the form
    assert httpx.get(f"{server.url}/v1/losses/browser-sine:1/tags").json()["tags"] == {}

    page.get_by_role("button", name="API key").click()
    page.fill("#key-input", "test-key-123")
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    sent = []
    page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
    page.goto(server.url + "/losses")
    page.locator("#losses a", has_text="browser-sine").first.wait_for()
    page.goto(server.url + "/losses/browser-sine/versions/1")
    page.wait_for_function("() => document.querySelector('#landscape').naturalWidth > 0")
    api_calls = [(u, h) for u, h in sent if "/v1/" in u]
    for part in ("/v1/losses?", "/v1/losses/browser-sine%3A1/landscape?format=png", "/v1/jobs/1/report"):
        assert any(part in u for u, _ in api_calls), (part, api_calls)
    assert all(h == "Bearer test-key-123" for _, h in api_calls), api_calls
    assert page.inner_text("#key-state") == "…-123"
    page.goto(server.url + "/")
    page.locator("#jobs tbody tr").first.wait_for()
    shot(page, "dashboard-jobs.png")
    page.evaluate("localStorage.removeItem('ml3.apiKey')")


def test_cancel_from_the_job_page(page, server):
    job = httpx.post(f"{server.url}/v1/jobs", json={
        "task": {"family": "sine", "points": 20, "heldout_points": 20}, "seeds": 1,
        "outer_iterations": 100_000,
        "eval_every": 1000, "eval_steps": 5, "validation_tasks": 1}).json()
    page.goto(f"{server.url}/jobs/{job['id']}")
    page.wait_for_selector("#job-status.running", timeout=60_000)
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_selector("#job-status.canceled", timeout=60_000)
    assert page.locator("#cancel").is_hidden()
    assert "Canceled at iteration" in page.inner_text("#result")
    assert httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["status"] == "canceled"
    page.goto(server.url + "/?status=canceled")
    page.locator(f'#jobs tr[data-job="{job["id"]}"]').wait_for()
    assert page.locator("#jobs tbody tr").count() == 1


def test_a_failed_job_shows_its_error_plainly(page, server):
    # a device the runner cannot serve is refused at submit now: the row is written as a runner fails a job
    from app.db.models import FAILED, META_TRAIN, Job, utcnow
    from app.db.session import get_sessionmaker

    spec = {"task": {"family": "sine"}, "seeds": 1, "outer_iterations": 5}
    error = {"code": "execution_error", "detail": "RuntimeError: CUDA error: invalid device ordinal"}
    with get_sessionmaker(f"sqlite:///{(server.data_dir / 'ml3.db').resolve()}").begin() as db:
        row = Job(kind=META_TRAIN, status=FAILED, spec=spec, plan=spec, error=error, attempts=1,
                  started_at=utcnow(), finished_at=utcnow())
        db.add(row)
        db.flush()
        job = {"id": row.id}
    page.goto(f"{server.url}/jobs/{job['id']}")
    page.wait_for_selector("#job-status.failed", timeout=60_000)
    error = httpx.get(f"{server.url}/v1/jobs/{job['id']}").json()["error"]
    shown = page.inner_text("#job-error")
    assert error["code"] in shown and error["detail"] in shown and len(error["detail"]) > 10
    shot(page, "dashboard-job-failed.png")


def test_a_digits_job_from_the_form_to_its_classification_loss(page, server):
    """The digits form submits a classification job; the loss page evaluates logits and labels and
    draws the margin landscape; the job page labels the baseline cross-entropy."""
    page.goto(server.url + "/submit?family=digits")
    for loc, value in {"seeds": "1", "outer_iterations": "4", "inner_steps": "2", "eval_every": "2",
                       "eval_steps": "5", "validation_tasks": "2", "task.heldout_per_class": "10",
                       "meta_test.steps": "5", "meta_test.tasks": "1", "meta_test.horizons": "5"}.items():
        field(page, loc).locator("input").fill(value)
    page.locator("form.job-form:not([hidden]) [name=register_as]").fill("browser-digits")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url("**/jobs/*")
    page.wait_for_selector("#job-status.succeeded", timeout=240_000)
    page.locator('[data-curve="validation.error_heldout"] svg').wait_for()
    assert "cross-entropy" in page.inner_text("#curves")
    page.locator("#result-loss").click()
    page.wait_for_url("**/losses/browser-digits/versions/1")
    page.wait_for_function("() => { const i = document.querySelector('#landscape'); "
                           "return i.complete && i.naturalWidth > 0; }")
    assert "logit margin" in page.inner_text("#landscape-note")
    page.fill("#ev-pred", "2, 0.1, -1; 0.3, 0.2, 1")
    page.fill("#ev-target", "0, 2")
    page.get_by_role("button", name="Evaluate").click()
    shown = float(page.locator("#eval-loss").get_attribute("data-value"))
    loss_fn = load_loss(f"{server.url}/v1/losses/browser-digits:1")
    expected = float(loss_fn(torch.tensor([[2.0, 0.1, -1.0], [0.3, 0.2, 1.0]]), torch.tensor([0, 2])))
    assert shown == pytest.approx(expected, rel=1e-6)
    page.fill("#ev-target", "0, 3")  # a label outside the 3 classes: the message sits at the labels field
    page.get_by_role("button", name="Evaluate").click()
    bad = page.locator('#evaluate .field[data-loc="labels"] .field-error')
    bad.wait_for()
    assert "outside" in bad.inner_text()
    shot(page, "dashboard-digits-loss.png")


def test_a_sweep_page_shows_its_sortable_leaderboard_and_a_plot_per_setting(page, server):
    from conftest import TINY

    spec = {"kind": "sweep", "base": TINY, "space": {"outer_lr": [0.001, 0.01], "loss.hidden": [[8], [16]]},
            "trials": 4, "register_as": "browser-sweep"}
    sweep = httpx.post(f"{server.url}/v1/jobs", json=spec).json()
    page.goto(f"{server.url}/jobs/{sweep['id']}")  # a sweep's job page is its sweep page
    page.wait_for_url(f"**/sweeps/{sweep['id']}")
    page.wait_for_selector("#job-status.succeeded", timeout=240_000)
    job = httpx.get(f"{server.url}/v1/jobs/{sweep['id']}").json()
    rows = page.locator("#leaderboard tbody tr")
    assert rows.count() == 4
    best = [int(t) for t in rows.evaluate_all("rs => rs.map(r => r.dataset.trial)")]
    assert best == job["leaderboard"]  # by rank: best first
    headers = [h.lower() for h in page.locator("#leaderboard th").all_inner_texts()]
    assert "ratio at 10 steps" in headers and "ratio at 100 steps" in headers and "outer_lr" in headers
    page.locator('#leaderboard th[data-sort="score"]').click()
    page.locator('#leaderboard th[data-sort="score"]').click()  # descending: the worst first
    assert [int(t) for t in rows.evaluate_all("rs => rs.map(r => r.dataset.trial)")][0] == job["leaderboard"][-1]
    for key in ("outer_lr", "loss.hidden"):
        assert page.locator(f'svg[data-setting="{key}"] circle').count() == 4
    assert page.inner_text("#result-loss") == "browser-sweep:1"
    shot(page, "dashboard-sweep.png")


def _color(locator) -> str:
    return locator.evaluate("e => getComputedStyle(e).color")


RED = "rgb(180, 35, 24)"  # --bad


def test_meta_test_curves_reach_the_longest_horizon_and_a_losing_ratio_is_red(page, server):
    """A loss of two meta-train iterations from a random net (the paper's form) loses to the tuned plain loss
    at 300 steps: the job page draws its meta-test curves to 300 steps (past meta_test.steps = 10) with the
    tuned baseline, and its ratio is red in the chart, the horizon table and the jobs list."""
    job = httpx.post(f"{server.url}/v1/jobs", json={
        "task": {"family": "sine", "points": 20, "heldout_points": 20}, "preset": "paper", "seeds": 1,
        "outer_iterations": 2, "eval_every": 2, "eval_steps": 5, "validation_tasks": 2,
        "meta_test": {"steps": 10, "tasks": 3, "horizons": [10, 300]}, "register_as": "browser-horizon"}).json()
    page.goto(f"{server.url}/jobs/{job['id']}")
    page.wait_for_selector("#job-status.succeeded", timeout=240_000)
    chart = page.locator('#metatest .chart-card[data-metric="mse_heldout"] svg')
    chart.wait_for()
    assert chart.get_attribute("data-x-max") == "300"
    assert chart.locator("text.x-tick").last.text_content() == "300"
    legend = page.inner_text('#metatest .chart-card[data-metric="mse_heldout"] .legend')
    assert "tuned: best lr per step count" in legend and "same lr" in legend
    ratio = httpx.get(f"{server.url}/v1/jobs/{job['id']}/report").json()["meta_test"]["horizon"][-1]["ratio_vs_tuned"]
    assert ratio > 1  # the premise: the learned loss loses at 300 steps
    cell = page.locator('#horizon td[data-ratio="ratio_vs_tuned"][data-steps="300"]')
    assert "bad" in cell.get_attribute("class") and _color(cell) == RED
    label = chart.locator('text.marker-label[data-steps="300"]')
    assert label.evaluate("e => getComputedStyle(e).fill") == RED
    shot(page, "dashboard-job-horizon.png")

    page.goto(server.url + "/")
    shown = page.locator(f'#jobs tr[data-job="{job["id"]}"] .ratios span[data-steps="300"]')
    shown.wait_for()
    assert _color(shown) == RED and shown.text_content().startswith(f"{ratio:.4g}"[:4])


def test_the_form_has_presets_choices_help_for_every_field_and_a_run_time_estimate(page, server):
    page.goto(server.url + "/submit?family=sine")
    form = page.locator("form.job-form:not([hidden])")
    preset = form.locator("select[name=preset]")
    assert preset.locator("option").all_text_contents() == ["default", "paper"]
    assert field(page, "inner_steps").locator("input").input_value() == "500"  # the default preset
    assert field(page, "loss.form").locator("select").input_value() == "weighted_se"
    estimate = form.locator("[data-role=estimate]")
    page.wait_for_function("() => document.querySelector('form.job-form:not([hidden]) [data-role=estimate]')"
                           ".dataset.seconds !== undefined")
    default_seconds = float(estimate.get_attribute("data-seconds"))
    assert default_seconds > 0 and "Estimated run time: about" in estimate.inner_text()
    assert "estimate" in estimate.inner_text()

    preset.select_option("paper")  # the paper's settings fill the fields, and the estimate follows
    assert field(page, "inner_steps").locator("input").input_value() == "1"
    assert field(page, "loss.form").locator("select").input_value() == "net"
    assert form.locator("[data-role=preset-why]").inner_text().startswith("The official code")
    page.wait_for_function(f"() => document.querySelector('form.job-form:not([hidden]) [data-role=estimate]')"
                           f".dataset.seconds != {default_seconds}")
    body = form.locator("[data-role=preview]").text_content()
    assert '"preset": "paper"' in body and "inner_steps" not in body  # only what differs from the preset is sent

    # enum fields are selects of their values; every field has its help
    schedule = field(page, "schedule").locator("select option").all_text_contents()
    assert schedule == ["unrolled", "online", "persistent"]
    for loc in ("inner_optimizer", "device", "dtype", "loss.activation", "task.model_activation"):
        assert field(page, loc).locator("select").count() == 1, loc
    fields = form.locator(".fields .field")
    helps = [fields.nth(i).locator(".hint").text_content().strip() for i in range(fields.count())]
    assert len(helps) > 40 and all(helps), [fields.nth(i).get_attribute("data-loc") for i, h in enumerate(helps)
                                            if not h]
    shot(page, "dashboard-submit-presets.png")
