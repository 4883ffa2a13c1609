"""End to end: a real ``ml3 serve`` process on a free port with a temporary data directory,
driven over HTTP by ``ml3core.client``: train, follow SSE, evaluate, download, meta-test, move an
alias; then stop the server mid-job (SIGTERM, then SIGKILL) and restart it."""

import json
import signal
import subprocess
import sys

import httpx
import pytest
import torch
from conftest import PROBLEM_KEYS, ROOT, SMALL, TINY, Server, wait_for

from ml3core import load_loss
from ml3core.client import ApiError, Client


@pytest.fixture(scope="module")
def c(server):
    with Client(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def trained(c):
    """A small sine job followed over SSE to success: (job, events)."""
    job = c.submit({**SMALL, "register_as": "e2e"})
    events = list(c.events(job["id"]))
    return c.job(job["id"]), events


def test_sse_follows_a_job_to_success(trained):
    job, events = trained
    assert job["status"] == "succeeded" and job["result"]["loss"] == "e2e:1"
    kinds = [e for _, e, _ in events]
    statuses = [d["status"] for _, e, d in events if e == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    progress = [d for _, e, d in events if e == "progress"]
    assert [d["completed"] for d in progress if d["phase"] == "meta-train"] == [5, 10, 15, 20]
    phases = [d["phase"] for d in progress]  # every phase after meta-training reports too, in order
    assert sorted(set(phases), key=phases.index) == ["meta-train", "validation", "meta-test", "figures"]
    choice = [d for d in progress if d["phase"] == "validation"]  # the publishing choice, to its longest horizon
    assert choice[-1]["completed"] == choice[-1]["total"] and choice[-1]["unit"] == "steps"
    test = [d for d in progress if d["phase"] == "meta-test"]  # SGD steps of both runs to the longest horizon
    assert test[-1] == {"completed": 40, "total": 40, "unit": "steps", "phase": "meta-test"}
    assert [d["completed"] for d in test] == sorted(d["completed"] for d in test)
    assert job["progress"] == {"completed": 20, "total": 20, "unit": "iterations"}
    assert 0 < job["metrics"]["meta_train_seconds"] and job["metrics"]["phase"] == "figures"
    assert kinds.count("metrics") == 2
    assert [i for i, _, _ in events] == sorted(i for i, _, _ in events)


def test_evaluate_equals_the_loss_loaded_locally(server, c, trained):
    by_url = load_loss(f"{server.url}/v1/losses/e2e")  # ml3core fetches .../artifact
    path = c.pull("e2e", str(server.data_dir / "e2e.zip"))
    pulled = load_loss(path)
    pred, target = torch.linspace(-3, 3, 50), torch.linspace(-1, 1, 50)
    expected = float(pulled(pred, target))
    assert float(by_url(pred, target)) == expected
    assert c.evaluate("e2e", pred, target)["loss"] == pytest.approx(expected, rel=1e-6)
    cli = subprocess.run([sys.executable, "-m", "app.cli", "losses", "evaluate", "e2e", "--server", server.url,
                          "--pred", "0.1,0.5", "--target", "0,1"], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["loss"] == pytest.approx(float(pulled(torch.tensor([0.1, 0.5]),
                                                                        torch.tensor([0.0, 1.0]))), rel=1e-6)


def test_meta_test_job(c, trained):
    job = c.meta_test("e2e", tasks=3, steps=20, horizons=[10, 20], seeds=2)
    job = c.wait(job["id"], progress=False, timeout=300)
    assert job["status"] == "succeeded" and job["kind"] == "meta-test"
    assert job["progress"] == {"completed": 40, "total": 40, "unit": "steps"}  # SGD steps of both runs to 20
    report = c.report(job["id"])
    assert set(report["curves"]) == {"learned", "mse", "tuned"}
    assert {"mse_train", "mse_heldout"} <= set(report["curves"]["learned"])
    assert [h["steps"] for h in report["horizon"]] == [10, 20]
    assert c.request("GET", job["result"]["figures"]["meta_test.png"]).content[:4] == b"\x89PNG"


def test_alias_move_is_followed(c, trained):
    second = c.wait(c.submit({**SMALL, "seed": 7, "register_as": "e2e"})["id"], progress=False, timeout=300)
    assert second["result"]["loss"] == "e2e:2"
    pred, target = [0.3, 1.5, -0.7], [0.0, 1.0, 0.0]
    v1 = c.evaluate("e2e:1", pred, target)["loss"]
    v2 = c.evaluate("e2e:2", pred, target)["loss"]
    assert v1 != v2
    c.set_alias("e2e", "production", 1)
    assert c.evaluate("e2e@production", pred, target)["loss"] == v1
    c.set_alias("e2e", "production", 2)
    got = c.evaluate("e2e@production", pred, target)
    assert got["loss"] == v2 and got["id"] == "e2e:2"


def test_downstream_example_trains_with_the_served_loss(server, trained):
    out = subprocess.run([sys.executable, "examples/downstream_training.py", "--server", server.url,
                          "--loss", "e2e:1", "--steps", "30"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 3, 15, 30]
    assert rows[0][1] == rows[0][2]  # the same initial model for both losses


def test_cli_submit_wait_reports_every_phase(server, tmp_path):
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TINY))
    out = subprocess.run([sys.executable, "-m", "app.cli", "jobs", "submit", "--spec", str(spec), "--wait", "--json",
                          "--server", server.url], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "succeeded"
    job = json.loads(out.stdout)["id"]
    for line in (f"job {job} meta-train 2/2", f"job {job} meta-test 4/4", f"job {job} figures 1/1"):
        assert line in out.stderr, out.stderr  # not a full bar at the end of meta-training, then silence


def test_head_on_downloads_gives_the_headers_without_the_body(server, trained):
    job = trained[0]
    for path in ("/v1/losses/e2e/artifact", f"/v1/jobs/{job['id']}/report",
                 f"/v1/jobs/{job['id']}/figures/meta_test.png"):
        got, head = httpx.get(server.url + path), httpx.head(server.url + path)
        assert got.status_code == head.status_code == 200, (path, head.status_code)
        assert head.content == b"" and int(head.headers["content-length"]) == len(got.content) > 0, path
        assert head.headers["content-type"] == got.headers["content-type"], path
    head, got = httpx.head(server.url + "/v1/losses/e2e/artifact"), httpx.get(server.url + "/v1/losses/e2e/artifact")
    assert (head.headers["etag"], head.headers["x-loss-id"]) == (got.headers["etag"], got.headers["x-loss-id"])
    assert httpx.head(server.url + "/v1/losses/nope/artifact").status_code == 404


def test_cli_lists_are_headed_tables(server, trained):
    def ml3(*argv):
        out = subprocess.run([sys.executable, "-m", "app.cli", *argv, "--server", server.url], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        return [line.split() for line in out.stdout.splitlines()]

    jobs = ml3("jobs", "list")
    assert jobs[0] == ["ID", "KIND", "STATUS", "PHASE", "PROGRESS", "LOSS"]
    assert [str(trained[0]["id"]), "meta-train", "succeeded", "20/20", "iterations", "e2e:1"] in jobs[1:]
    losses = ml3("losses", "list")
    assert losses[0] == ["NAME", "LATEST", "FAMILY", "ALIASES", "VERDICT"] and losses[1][0] == "e2e"
    assert losses[1][2] == "sine"
    shown = " ".join(losses[1][3:])  # aliases (if any), then the newest version's verdict
    assert shown.endswith("over a tuned baseline") or " beats a tuned baseline at " in f" {shown}"


def test_cli_problem_is_one_line_with_the_detail_and_the_request(server, trained):
    out = subprocess.run([sys.executable, "-m", "app.cli", "losses", "pull", "nope", "--server", server.url],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    detail = httpx.get(f"{server.url}/v1/losses/nope/artifact").json()["detail"]
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"ml3: 404 not_found: {detail} (GET {server.url}/v1/losses/nope/artifact)"]


def test_a_missing_loss_shows_the_servers_detail_in_a_fresh_process(server, trained):
    url = f"{server.url}/v1/losses/nope"
    problem = httpx.get(f"{url}/artifact").json()
    load = subprocess.run([sys.executable, "-c", f"from ml3core import load_loss; load_loss({url!r})"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert load.returncode != 0
    assert f"LossBundleError: GET {url}/artifact: 404 {problem['code']}: {problem['detail']}" in load.stderr
    example = subprocess.run([sys.executable, "examples/downstream_training.py", "--server", server.url],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)  # no --loss: the README's
    assert example.returncode == 1 and len(example.stderr.strip().splitlines()) == 1, example.stderr
    assert "/v1/losses/my-loss/artifact: 404" in example.stderr and "--register-as my-loss" in example.stderr
    example = subprocess.run([sys.executable, "examples/classification_downstream.py", "--server", server.url,
                              "--loss", "digits"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert example.returncode == 1 and len(example.stderr.strip().splitlines()) == 1, example.stderr
    assert "/v1/losses/digits/artifact: 404" in example.stderr and "--register-as digits" in example.stderr


def test_digits_job_and_classification_example(server, c):
    """A small digits job through the real service; the example trains with the served loss beside CE."""
    spec = {"task": {"family": "digits", "heldout_per_class": 10}, "seeds": 1, "outer_iterations": 4,
            "inner_steps": 2, "tasks_per_batch": 2, "eval_every": 2, "eval_steps": 5, "validation_tasks": 2,
            "meta_test": {"steps": 5, "tasks": 1, "horizons": [5]}, "register_as": "e2e-digits"}
    job = c.wait(c.submit(spec)["id"], progress=False, timeout=300)
    assert job["status"] == "succeeded" and job["result"]["loss"] == "e2e-digits:1"
    local = load_loss(f"{server.url}/v1/losses/e2e-digits")
    logits, labels = torch.tensor([[2.0, 0.0, -1.0, 0.5]]), torch.tensor([1])
    got = c.evaluate_logits("e2e-digits", logits, labels, return_grad=True)
    assert got["loss"] == pytest.approx(float(local(logits, labels)), rel=1e-6) and len(got["grad"][0]) == 4
    out = subprocess.run([sys.executable, "examples/classification_downstream.py", "--server", server.url,
                          "--loss", "e2e-digits", "--steps", "20"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 10, 20]
    assert rows[0][1] == rows[0][2]  # the same initial model for both losses
    assert float(rows[-1][1]) < 0.75 and float(rows[-1][2]) < 0.75  # both learn past 4-way chance


def test_bad_inputs_are_problems_and_change_nothing(server, c, trained):
    tables = ("jobs", "job_events", "loss_versions", "loss_aliases", "checkpoints")
    before = {t: server.rows(t) for t in tables}
    bad = [
        ("POST", "/v1/jobs", {"json": {"task": {"family": "nope"}}}, 422),
        ("POST", "/v1/jobs", {"json": {**SMALL, "unknown": 1}}, 422),
        ("POST", "/v1/jobs", {"json": {**SMALL, "outer_iterations": -5}}, 422),
        ("POST", "/v1/losses/e2e/evaluate", {"content": b'{"pred": [NaN], "target": [0]}',
                                             "headers": {"content-type": "application/json"}}, 422),
        ("POST", "/v1/losses/e2e/evaluate", {"json": {"pred": [1, 2, 3], "target": [1, 2]}}, 422),
        ("GET", "/v1/losses/e2e/evaluate?pred=" + ",".join(["1"] * 1001) + "&target=1", {}, 413),
        ("PUT", "/v1/losses/e2e/aliases/production", {"json": {"version": 42}}, 422),
        ("GET", "/v1/losses/e2e:42", {}, 404),
    ]
    for method, path, kw, status in bad:
        with pytest.raises(ApiError) as e:
            c.request(method, path, **kw)
        assert e.value.status == status, (path, e.value)
        assert PROBLEM_KEYS <= set(e.value.problem)
    assert {t: server.rows(t) for t in tables} == before


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_restart_mid_job_resumes_from_checkpoint_and_registers_once(tmp_path, sig):
    server = Server(tmp_path).start()
    # long enough that it cannot end between its first checkpoint and the signal on a fast machine
    spec = {**SMALL, "outer_iterations": 600, "eval_every": 300, "register_as": "restarted"}
    try:
        with Client(server.url) as c:
            job_id = c.submit(spec)["id"]
            checkpoint = wait_for(lambda: c.job(job_id)["checkpoint"], 180, "a checkpoint of the job",
                                  (tmp_path / "server.log").read_text)
        server.stop(sig)
        left = server.rows("jobs", f"id = {job_id} AND status IN ('queued', 'running')")
        assert left == 1  # neither finished nor failed while the server was down
        server.start()
        with Client(server.url) as c:
            job = c.wait(job_id, progress=False, timeout=300)
            assert job["status"] == "succeeded" and job["progress"]["completed"] == 600
            runs = [d for _, e, d in c.events(job_id) if e == "status" and d["status"] == "running"]
            assert len(runs) == 2 and runs[1]["resumed_from"] >= checkpoint > 0
            versions = c.request("GET", "/v1/losses/restarted/versions").json()["items"]
            assert [(v["version"], v["job_id"]) for v in versions] == [(1, job_id)]
    finally:
        server.stop()


def test_noisy_labels_example_quick(server, tmp_path):
    """examples/noisy_labels.py --quick: upload with a trusted column, meta-train weighted_ce, meta-test
    against the best tuned baseline, then the side-by-side table of learned, tuned CE and tuned GCE."""
    out = subprocess.run([sys.executable, "examples/noisy_labels.py", "--server", server.url, "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any("trusted" in line and line.startswith("data set") for line in lines), out.stdout
    assert any("ratio_vs_best" in line and "best tuned baseline" in line for line in lines), out.stdout
    header = next(line for line in lines if line.split()[:1] == ["steps"])
    assert header.split() == ["steps", "learned", "cross-entropy", "GCE"]
    rows = [line.split() for line in lines[lines.index(header) + 1:]]
    assert [int(r[0]) for r in rows] == [10, 30]
    errors = [float(r[i]) for r in rows for i in range(1, len(r)) if r[i].replace(".", "", 1).isdigit()]
    assert len(errors) == 6 and all(0 <= e <= 1 for e in errors), rows  # the three losses at both step counts
