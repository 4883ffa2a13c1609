"""The runners: the embedded polling loop, its process (which must not outlive the server), the
Celery runner's readiness check."""

import os
import signal
import subprocess
import sys
import textwrap
import threading

from conftest import wait_for
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import Job, LossVersion
from app.db.session import get_sessionmaker
from app.jobs.runner import CeleryRunner, LocalRunner, next_job, serve
from app.main import create_app

SMALL = {"task": {"family": "sine", "points": 20, "heldout_points": 20}, "preset": "paper", "seeds": 1,
         "outer_iterations": 10,
         "eval_every": 10, "eval_steps": 5, "validation_tasks": 2,
         "meta_test": {"steps": 5, "tasks": 2, "horizons": [5]}}


def test_polling_loop_runs_queued_jobs_in_order_then_stops(tmp_path):
    settings = Settings(data_dir=tmp_path, runner="none", poll_seconds=0.05, lease_seconds=5)
    with TestClient(create_app(settings)) as c:
        ids = [c.post("/v1/jobs", json={**SMALL, "register_as": "polled", "seed": s}).json()["id"] for s in (0, 1)]
        assert next_job(settings) == ids[0]
        stop = threading.Event()
        thread = threading.Thread(target=serve, args=(settings, stop))
        thread.start()
        try:
            wait_for(lambda: all(c.get(f"/v1/jobs/{i}").json()["status"] == "succeeded" for i in ids), 120,
                     "both jobs to succeed")
        finally:
            stop.set()
            thread.join(60)
        assert not thread.is_alive()
        assert [c.get(f"/v1/jobs/{i}").json()["result"]["loss"] for i in ids] == ["polled:1", "polled:2"]
        assert next_job(settings) is None
    with get_sessionmaker(settings.db_url)() as db:
        assert [v.job_id for v in db.scalars(select(LossVersion).order_by(LossVersion.version))] == ids
        assert all(j.owner is None for j in db.scalars(select(Job)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited already
        return f.read().split(")")[-1].split()[0] != "Z"


def test_runner_process_does_not_outlive_a_killed_server(tmp_path):
    parent = textwrap.dedent(f"""
        import os, signal, sys, time
        from app.core.config import Settings
        from app.db.session import upgrade
        from app.jobs.runner import LocalRunner
        settings = Settings(data_dir={str(tmp_path)!r})
        upgrade(settings.db_url)
        runner = LocalRunner(settings)
        runner.start()
        print(runner.proc.pid, flush=True)
        time.sleep(3)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: not _alive(child), 30, "the runner process to end with its parent")
    assert not _alive(child)


def test_local_runner_reports_and_restarts_a_dead_process(tmp_path):
    settings = Settings(data_dir=tmp_path)
    from app.db.session import upgrade

    upgrade(settings.db_url)
    runner = LocalRunner(settings)
    assert runner.problem() is not None  # not started
    runner.start()
    try:
        assert runner.problem() is None
        first = runner.proc
        first.kill()
        first.wait()
        assert "not running" in runner.problem()  # the supervisor waits a second before restarting
        wait_for(lambda: runner.problem() is None, 30, "the supervisor to restart the runner")  # no submit
        assert runner.proc is not first and runner.restarts == 1
        runner.proc.kill()
        runner.proc.wait()
        runner.enqueue(1)  # a submit restarts it at once
        assert runner.problem() is None and runner.restarts == 2
    finally:
        runner.stop()
    assert runner.proc.poll() is not None
    assert not any(t.name == "ml3-runner-supervisor" and t.is_alive() for t in threading.enumerate())


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().split(")")[-1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError):
                pass
    return out


def test_a_killed_runner_is_restarted_and_its_job_resumes_without_a_new_submit(tmp_path):
    """kill -9 of the embedded runner mid-job: the server restarts it, the job resumes from its
    checkpoint and succeeds; nothing is submitted after the kill."""
    import httpx
    from conftest import Server

    server = Server(tmp_path).start()
    try:
        spec = {**SMALL, "outer_iterations": 2000, "eval_every": 2000, "register_as": "survivor"}
        job = httpx.post(f"{server.url}/v1/jobs", json=spec).json()
        url = f"{server.url}/v1/jobs/{job['id']}"
        wait_for(lambda: httpx.get(url).json()["checkpoint"], 120, "a checkpoint")
        (runner,) = _children(server.proc.pid)
        os.kill(runner, signal.SIGKILL)
        wait_for(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, 10, "readyz to see the dead runner")
        done = wait_for(lambda: (j := httpx.get(url).json())["status"] in ("succeeded", "failed") and j, 240,
                        "the job to finish", lambda: (tmp_path / "server.log").read_text())
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 2 and done["result"]["loss"] == "survivor:1"
        assert runner not in _children(server.proc.pid) and len(_children(server.proc.pid)) == 1
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert server.rows("jobs") == 1
    finally:
        server.stop()


def test_celery_runner_is_not_ready_without_a_broker():
    runner = CeleryRunner(Settings(runner="celery", broker_url="redis://127.0.0.1:1/0"))
    assert "broker unreachable" in runner.problem()
