"""Sweeps on the embedded default (SQLite): checks at submit that store nothing, trials as child jobs
driven step by step (grid, random, tpe), a failed trial recorded while the sweep goes on, cancel, the
best trial's loss registered once, migration 0006, and a real ``ml3 serve`` running a sweep submitted
and watched with ``ml3 sweep``. The same sweep on Celery workers: tests/test_worker.py."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, assert_problem, migrate, new_key, postgres_database, table_counts, wait_for
from sqlalchemy import select, text, update

from app.core.config import Settings
from app.db.models import Job, JobFile, LossVersion
from app.jobs.execute import run_job
from app.jobs.sweep import drive
from app.services import sweeps

GRID = {"kind": "sweep", "base": TINY, "space": {"outer_lr": [0.001, 0.01], "inner_steps": [1, 2]}, "trials": 4,
        "register_as": "swept"}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return Settings(data_dir=tmp_path_factory.mktemp("sweeps"), runner="none", auth="on", max_active_jobs=5,
                    max_sweep_trials=8)


@pytest.fixture(scope="module")
def key(Session):
    return new_key(Session, "submit")


def versions(Session, name: str) -> list[tuple[int, bytes]]:
    """(job id, weights) of each version of ``name``."""
    with Session() as db:
        return [tuple(r) for r in db.execute(select(LossVersion.job_id, LossVersion.weights).join(LossVersion.loss)
                                             .where(text("losses.name = :n")).params(n=name))]


def test_a_grid_sweep_runs_its_trials_records_a_failure_and_registers_the_best_once(client, Session, settings, key):
    r = client.post("/v1/jobs", json=GRID, headers=key)
    assert r.status_code == 202, r.text
    sweep = client.get(f"/v1/jobs/{r.json()['id']}", headers=key).json()
    assert sweep["kind"] == "sweep" and sweep["status"] == "running" and sweep["progress"]["total"] == 4
    trials = sweep["trials"]
    assert [(t["params"]["inner_steps"], t["params"]["outer_lr"]) for t in trials] == [
        (1, 0.001), (1, 0.01), (2, 0.001), (2, 0.01)]
    with Session() as db:
        rows = [db.get(Job, t["id"]) for t in trials]
        assert {(j.kind, j.parent_id, j.register_as) for j in rows} == {("meta-train", sweep["id"], None)}
        assert rows[2].spec["inner_steps"] == 2 and rows[2].plan["outer_lr"] == 0.001
    # the last trial fails (claimed once too often); the others run; the sweep goes on
    with Session.begin() as db:
        db.execute(update(Job).where(Job.id == trials[3]["id"]).values(attempts=settings.max_attempts))
    assert [run_job(t["id"], "runner-a", settings) for t in trials] == ["succeeded"] * 3 + [None]
    assert versions(Session, "swept") == []  # a trial registers nothing itself
    assert drive(settings, sweep["id"]) == [] and drive(settings, sweep["id"]) == []  # idempotent
    done = client.get(f"/v1/jobs/{sweep['id']}", headers=key).json()
    assert done["status"] == "succeeded", done["error"]
    assert [t["status"] for t in done["trials"]] == ["succeeded"] * 3 + ["failed"]
    assert done["trials"][3]["error"]["code"] == "too_many_attempts" and done["trials"][3]["score"] is None
    scored = [t for t in done["trials"] if t["score"] is not None]
    assert len(scored) == 3 and all(set(t["ratios"]) == {"10", "100"} for t in scored)
    for t in scored:  # the score: the worst meta-validation ratio against the tuned baseline
        assert t["score"] == max(t["ratios"].values())
        report = client.get(f"/v1/jobs/{t['id']}/report", headers=key).json()["validation"]
        i = report["chosen_index"]
        assert t["score"] == pytest.approx(report["worst_ratio"][i])
    best = min(scored, key=lambda t: (t["score"], t["trial"]))
    assert done["leaderboard"][0] == best["trial"] and done["leaderboard"][-1] == 3
    result = done["result"]
    assert result["loss"] == "swept:1" and result["best_trial"] == best["trial"] and result["score"] == best["score"]
    assert [t["id"] for t in result["trials"]] == [t["id"] for t in trials]
    ((job_id, registered),) = versions(Session, "swept")
    assert job_id == sweep["id"]
    with Session() as db:
        weights = db.scalar(select(JobFile.data).where(JobFile.job_id == best["id"],
                                                       JobFile.name == "loss.safetensors"))
    assert registered == weights  # the best trial's φ, as it trained it
    assert drive(settings, sweep["id"]) == [] and len(versions(Session, "swept")) == 1


@pytest.mark.parametrize("change, status, code", [
    ({"space": {"outer_lrr": [0.001]}}, 422, "invalid"),  # not a spec field
    ({"space": {"task.pointz": [3]}}, 422, "invalid"),
    ({"space": {"outer_lr": [-1.0]}}, 422, "invalid"),  # a value the spec refuses
    ({"space": {"device": ["cuda"]}}, 422, "invalid"),  # fixed: it picks the queue
    ({"space": {"outer_lr": {"low": 0.001, "high": 0.01}}}, 422, "invalid"),  # grid takes lists
    ({"sampler": "random", "space": {"outer_lr": {"low": 0.1, "high": 0.01}}}, 422, "invalid"),
    ({"trials": 5}, 422, "invalid"),  # the grid has 4 points
    ({"trials": 9, "sampler": "random"}, 422, "max_sweep_trials_exceeded"),
    ({"trials": 0}, 422, None),
    ({"horizons": [50]}, 422, "invalid"),  # not a meta-validation horizon
    ({"base": {**TINY, "register_as": "x"}}, 422, "invalid"),
    ({"space": {"seeds": [1, 64]}, "trials": 2}, 422, "max_seeds_exceeded"),  # one trial over a job limit
    ({"extra": 1}, 422, None),
])
def test_a_bad_sweep_is_a_problem_that_stores_nothing(client, Session, key, change, status, code):
    before = table_counts(Session)
    assert_problem(client.post("/v1/jobs", json={**GRID, **change}, headers=key), status, code)
    assert table_counts(Session) == before


def test_a_sweep_larger_than_the_keys_limits_stores_nothing(client, Session, settings, key):
    """Its trials count against ML3_MAX_ACTIVE_JOBS (the sweep and its 4 trials: 5 of 5 allowed, so one active job
    of the key is too many) and their work together against ML3_MAX_WORK, before anything is stored."""
    from app.services.limits import job_size
    from ml3core.api import parse_spec

    other = new_key(Session, "submit")
    assert client.post("/v1/jobs", json=TINY, headers=other).status_code == 202
    before = table_counts(Session)
    assert_problem(client.post("/v1/jobs", json=GRID, headers=other), 429, "max_active_jobs_exceeded")
    assert table_counts(Session) == before
    works = [job_size(parse_spec(sweeps.apply(TINY, p))).work for p in sweeps.points(sweeps.parse_space(
        GRID["space"], "grid"), "grid", 4, 0)]
    settings.max_work = sum(works) - 1  # every trial fits alone, the four together do not
    try:
        assert max(works) < settings.max_work
        body = assert_problem(client.post("/v1/jobs", json=GRID, headers=key), 422, "max_work_exceeded")
        assert "4 trials" in body["detail"]
        assert table_counts(Session) == before
    finally:
        settings.max_work = Settings().max_work


def test_cancel_a_sweep_cancels_its_trials(client, Session, settings, key):
    sweep = client.post("/v1/jobs", json={**GRID, "register_as": "canceled"}, headers=key).json()
    ids = [t["id"] for t in client.get(f"/v1/jobs/{sweep['id']}", headers=key).json()["trials"]]
    assert client.post(f"/v1/jobs/{sweep['id']}/cancel", headers=key).status_code == 202
    assert drive(settings, sweep["id"]) == []
    done = client.get(f"/v1/jobs/{sweep['id']}", headers=key).json()
    assert done["status"] == "canceled" and [t["status"] for t in done["trials"]] == ["canceled"] * 4
    assert [run_job(i, "runner-a", settings) for i in ids] == [None] * 4
    assert versions(Session, "canceled") == []


def test_tpe_asks_each_trial_from_the_finished_ones(client, Session, settings, key):
    space = {"outer_lr": {"low": 1e-4, "high": 1e-1, "log": True}, "loss.hidden": [[8], [16, 16]]}
    spec = {**GRID, "sampler": "tpe", "trials": 3, "parallel": 1, "seed": 7, "space": space, "register_as": "tpe"}
    sweep_id = client.post("/v1/jobs", json=spec, headers=key).json()["id"]
    for n in range(1, 4):
        trials = client.get(f"/v1/jobs/{sweep_id}", headers=key).json()["trials"]
        assert len(trials) == n  # one in flight at a time
        assert run_job(trials[-1]["id"], "runner-a", settings) == "succeeded"
        history = [(t["params"], t["status"], t["score"]) for t in trials[:-1]]
        with Session() as db:
            plan = db.get(Job, sweep_id).plan
        assert sweeps.tpe_point(plan["dims"], 7, history) == trials[-1]["params"]  # replayed from the database
        drive(settings, sweep_id)
    done = client.get(f"/v1/jobs/{sweep_id}", headers=key).json()
    assert done["status"] == "succeeded" and done["result"]["loss"] == "tpe:1"
    for t in done["trials"]:
        assert 1e-4 <= t["params"]["outer_lr"] <= 1e-1 and t["params"]["loss.hidden"] in ([8], [16, 16])


def test_random_trials_are_drawn_from_the_seed_within_the_space():
    dims = sweeps.parse_space({"outer_lr": {"low": 1e-4, "high": 1e-1, "log": True}, "inner_steps": {"low": 1,
                                                                                                      "high": 5}},
                              "random")
    a, b = (sweeps.points(dims, "random", 20, 3) for _ in range(2))
    assert a == b and a != sweeps.points(dims, "random", 20, 4)
    assert all(1e-4 <= p["outer_lr"] <= 1e-1 and isinstance(p["inner_steps"], int) and 1 <= p["inner_steps"] <= 5
               for p in a)
    assert len({p["inner_steps"] for p in a}) > 2


def check_migration(url: str) -> None:
    from sqlalchemy import inspect

    from app.db.session import get_engine

    migrate(url, "upgrade", "head")
    assert "parent_id" in {c["name"] for c in inspect(get_engine(url)).get_columns("jobs")}
    with get_engine(url).begin() as conn:
        conn.execute(text("INSERT INTO jobs (id, kind, status, spec, plan, progress_completed, progress_total, "
                          "progress_unit, cancel_requested, attempts, created_at, updated_at) VALUES "
                          "(1, 'sweep', 'queued', '{}', '{}', 0, 4, 'trials', false, 0, '2020-01-01', '2020-01-01')"))
        conn.execute(text("INSERT INTO jobs (id, kind, status, spec, plan, progress_completed, progress_total, "
                          "progress_unit, cancel_requested, attempts, created_at, updated_at, parent_id) VALUES "
                          "(2, 'meta-train', 'queued', '{}', '{}', 0, 4, 'iterations', false, 0, '2020-01-01', "
                          "'2020-01-01', 1)"))
    migrate(url, "downgrade", "0005")
    assert "parent_id" not in {c["name"] for c in inspect(get_engine(url)).get_columns("jobs")}
    migrate(url, "upgrade", "head")
    with get_engine(url).begin() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs WHERE parent_id IS NULL")).scalar() == 2


def test_migration_0006_on_sqlite(tmp_path):
    check_migration(f"sqlite:///{tmp_path / 'ml3.db'}")


@pytest.mark.integration
def test_migration_0006_on_postgresql():
    with postgres_database("ml3_sweeps") as url:
        check_migration(url)


def test_the_embedded_runner_runs_a_sweep_submitted_and_watched_with_the_cli(server, tmp_path):
    """``ml3 serve`` with no extra service: the trials run one after another in the runner process."""
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"base": TINY, "space": {"outer_lr": [0.001, 0.01]}}))
    cmd = [sys.executable, "-m", "app.cli", "sweep", "--spec", str(path), "--space", "inner_steps=[1,2]",
           "--trials", "4", "--register-as", "cli-swept", "--server", server.url, "--interval", "0.2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "ML3_API_KEY": ""})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["RANK", "TRIAL", "JOB", "STATUS", "SCORE", "@10", "@100", "INNER_STEPS", "OUTER_LR"]
    assert len(lines) == 6 and "registered cli-swept:1" in lines[-1]
    assert sum("succeeded score" in line for line in out.stderr.splitlines()) == 4  # a line per trial as it ends
    bars = [line for line in out.stderr.splitlines() if line.startswith("job ") and " meta-train " in line]
    followed = {line.split()[1] for line in bars}
    assert followed and all(f"(job {job_id}) running" in out.stderr for job_id in followed)  # a running trial's bar
    out = subprocess.run([*cmd[:4], "--watch", lines[-1].split()[1].rstrip(":"), "--json", "--server", server.url],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    job = json.loads(out.stdout)
    trials = sorted(job["trials"], key=lambda t: t["started_at"])
    assert all(a["finished_at"] <= b["started_at"] for a, b in zip(trials, trials[1:], strict=False))  # one at a time
    assert job["status"] == "succeeded" and server.rows("loss_versions") == 1
    assert server.rows("loss_versions", f"job_id = {job['id']}") == 1
    wait_for(lambda: server.rows("jobs", "status IN ('queued', 'running')") == 0, 10, "nothing left to run")
