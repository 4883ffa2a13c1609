"""Celery workers for real: an ``ml3 serve --runner celery`` process and two ``ml3 worker``
processes on a fresh PostgreSQL database and a private redis-server. Jobs survive a worker killed
with SIGKILL or stopped with SIGTERM mid-job (same φ as an uninterrupted run), a duplicated
message, a broker that is down at submit time, a cancel and an API restart; each registers its
loss exactly once. A sweep's trials run on both workers at once, and a sweep survives a killed worker."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, Server, free_port, postgres_database, require_service, wait_for
from sqlalchemy import select

from app.core.config import Settings
from app.db.models import FINAL, Checkpoint, Job, JobEvent, Loss, LossVersion
from app.db.session import get_sessionmaker
from app.jobs.runner import TASK, CeleryRunner

pytestmark = pytest.mark.integration

SMALL = {"task": {"family": "sine", "points": 20, "heldout_points": 20}, "preset": "paper", "seeds": 1,
         "outer_iterations": 40,
         "eval_every": 20, "eval_steps": 10, "validation_tasks": 2,
         "meta_test": {"steps": 10, "tasks": 2, "horizons": [10]}}
LONG = {**SMALL, "outer_iterations": 200, "inner_steps": 3}  # a few seconds: long enough to interrupt
ENV = {"ML3_RUNNER": "celery", "ML3_LEASE_SECONDS": "3", "ML3_SWEEP_SECONDS": "0.5",
       "ML3_CHECKPOINT_EVERY": "10", "ML3_PROGRESS_EVERY": "5", "ML3_RUNNER_THREADS": "1",
       "ML3_VISIBILITY_TIMEOUT": "600"}


class Redis:
    """A private redis-server on a fixed free port, stopped and started again at will."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port, self.proc = data_dir, free_port(), None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        import redis

        log = open(self.data_dir / "redis.log", "ab")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--maxmemory-policy", "noeviction", "--dir", str(self.data_dir)]
        self.proc = subprocess.Popen(["redis-server", *args], stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def up():
            try:
                return client.ping()
            except redis.ConnectionError:
                return False

        wait_for(up, 30, "redis-server")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


class Worker:
    """``ml3 worker`` in its own process group; its log tells which jobs it ran."""

    count = 0

    def __init__(self, data_dir: Path, env: dict):
        Worker.count += 1
        self.log, self.env, self.proc = data_dir / f"worker-{Worker.count}.log", env, None

    def start(self) -> "Worker":
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--queues", "cpu"],
                                     env=self.env, cwd=ROOT, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> "Worker":
        def started():
            return " ready." in self.text() or self.proc.poll() is not None

        wait_for(started, 120, "worker start", self.text)
        assert self.proc.poll() is None, self.text()
        return self

    def ran(self, job_id: int, status: str) -> int:
        return self.text().count(f"job {job_id} -> {status}")

    def kill(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            return self.proc.wait(timeout)


class Stack:
    """The API, two workers, the broker and the database of one test module."""

    def __init__(self, tmp: Path, db_url: str):
        self.tmp, self.db_url, self.Session = tmp, db_url, get_sessionmaker(db_url)
        self.redis = Redis(tmp)
        self.env = {**os.environ, **ENV, "ML3_DATABASE_URL": db_url, "ML3_BROKER_URL": self.redis.url,
                    "ML3_DATA_DIR": str(tmp)}
        self.api = Server(tmp, **ENV, ML3_DATABASE_URL=db_url, ML3_BROKER_URL=self.redis.url)
        self.workers = []

    def start(self) -> None:
        self.redis.start()
        self.api.start()
        self.workers = [Worker(self.tmp, self.env).start() for _ in range(2)]
        for w in self.workers:
            w.wait_ready()

    def logs(self) -> str:
        return "\n".join(f"--- {w.log.name}\n{w.text()[-3000:]}" for w in self.workers)

    def submit(self, spec: dict) -> int:
        r = httpx.post(f"{self.api.url}/v1/jobs", json=spec, timeout=30)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: int) -> dict:
        return httpx.get(f"{self.api.url}/v1/jobs/{job_id}", timeout=30).json()

    def row(self, job_id: int) -> Job:
        with self.Session() as db:
            return db.get(Job, job_id)

    def wait_final(self, job_id: int, timeout: float = 150) -> dict:
        wait_for(lambda: self.row(job_id).status in FINAL, timeout, f"job {job_id} to end", self.logs)
        return self.job(job_id)

    def running_with_checkpoint(self, job_id: int, at_least: int = 20) -> tuple["Worker", int]:
        """Wait until the job runs on a worker and has a checkpoint; the worker and the checkpoint."""

        def ready():
            with self.Session() as db:
                it = db.scalar(select(Checkpoint.iteration).where(Checkpoint.job_id == job_id))
            return it is not None and it >= at_least and self.row(job_id).status == "running" and it

        iteration = wait_for(ready, 120, f"a checkpoint of job {job_id}", self.logs)
        pid = int(self.row(job_id).owner.split(":")[1])  # owner: host:pid:nonce
        worker = next(w for w in self.workers if w.proc.pid == pid)
        assert self.row(job_id).progress_completed < LONG["outer_iterations"]
        return worker, iteration

    def replace(self, worker: "Worker") -> "Worker":
        self.workers.remove(worker)
        new = Worker(self.tmp, self.env).start()
        self.workers.append(new)
        return new

    def versions(self, job_id: int) -> list[LossVersion]:
        with self.Session() as db:
            return list(db.scalars(select(LossVersion).where(LossVersion.job_id == job_id)))

    def weights(self, job_id: int) -> bytes:
        with self.Session() as db:
            return db.scalar(select(LossVersion.weights).where(LossVersion.job_id == job_id))

    def statuses(self, job_id: int) -> list[dict]:
        with self.Session() as db:
            q = select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "status")
            return list(db.scalars(q.order_by(JobEvent.id)))

    def close(self) -> None:
        for w in self.workers:
            w.kill(signal.SIGTERM)
        for w in self.workers:
            w.wait()
        self.api.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def db_url():
    with postgres_database("ml3_worker") as url:
        yield url


@pytest.fixture(scope="module")
def stack(db_url, tmp_path_factory):
    if shutil.which("redis-server") is None:
        require_service("redis-server", "not on PATH (the tests start and stop their own broker)")
    s = Stack(tmp_path_factory.mktemp("celery"), db_url)
    try:
        s.start()
        yield s
    finally:
        s.close()


@functools.cache
def reference_weights() -> bytes:
    """φ of LONG run in this process, without interruption."""
    from ml3core.api import meta_train

    return meta_train(LONG).bundle.weights


def test_three_jobs_at_once_through_two_workers_each_registered_once(stack):
    specs = [{**SMALL, "seed": seed, "register_as": "three"} for seed in (1, 2, 3)]
    with ThreadPoolExecutor(3) as pool:
        ids = list(pool.map(stack.submit, specs))
    jobs = [stack.wait_final(i) for i in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    assert [j["attempts"] for j in jobs] == [1, 1, 1]
    assert sorted(j["result"]["version"] for j in jobs) == [1, 2, 3]
    assert [len(stack.versions(i)) for i in ids] == [1, 1, 1]
    assert len({j["result"]["sha256"] for j in jobs}) == 3  # three seeds, three different φ
    per_worker = [sum(w.ran(i, "succeeded") for i in ids) for w in stack.workers]
    assert sorted(per_worker) == [1, 2]  # both idle workers took one; the first to finish took the third


def test_a_cuda_job_waits_in_queue_gpu_for_a_gpu_worker(stack):
    import redis

    job_id = stack.submit({**SMALL, "device": "cuda", "register_as": "gpu"})
    broker = redis.Redis(port=stack.redis.port)
    wait_for(lambda: broker.llen("gpu") == 1, 30, "a message in queue gpu")
    time.sleep(1)
    assert stack.row(job_id).status == "queued" and broker.llen("cpu") == 0  # no CPU worker took it
    assert httpx.post(f"{stack.api.url}/v1/jobs/{job_id}/cancel", timeout=30).json()["status"] == "canceled"


def test_the_same_message_delivered_twice_runs_the_job_once(stack):
    job_id = stack.submit({**LONG, "register_as": "twice"})
    wait_for(lambda: stack.row(job_id).status == "running", 60, "the job to start", stack.logs)
    sender = CeleryRunner(Settings(database_url=stack.db_url, broker_url=stack.redis.url)).app
    sender.send_task(TASK, args=[job_id], queue="cpu")  # what a visibility-timeout redelivery does
    wait_for(lambda: sum(w.ran(job_id, "not run") for w in stack.workers) == 1, 60,
             "the duplicate to be consumed", stack.logs)
    assert stack.row(job_id).status == "running"  # it came while the job ran: the lease was alive
    job = stack.wait_final(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    sender.send_task(TASK, args=[job_id], queue="cpu")  # and once more after the end
    wait_for(lambda: sum(w.ran(job_id, "not run") for w in stack.workers) == 2, 60,
             "the late duplicate to be consumed", stack.logs)
    assert sum(w.ran(job_id, "succeeded") for w in stack.workers) == 1
    assert len(stack.versions(job_id)) == 1 and stack.job(job_id)["result"]["loss"] == "twice:1"
    assert [s["status"] for s in stack.statuses(job_id)] == ["queued", "running", "succeeded"]


def test_a_worker_killed_mid_job_is_replaced_and_the_job_resumes_from_its_checkpoint(stack):
    job_id = stack.submit({**LONG, "register_as": "killed"})
    worker, checkpoint = stack.running_with_checkpoint(job_id)
    worker.kill(signal.SIGKILL)
    worker.wait()
    killed_at = stack.row(job_id).progress_completed
    stack.replace(worker).wait_ready()
    job = stack.wait_final(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    running = [s for s in stack.statuses(job_id) if s["status"] == "running"]
    assert [s["attempt"] for s in running] == [1, 2]
    assert running[0]["resumed_from"] is None
    assert checkpoint <= running[1]["resumed_from"] <= killed_at < LONG["outer_iterations"]
    assert len(stack.versions(job_id)) == 1
    assert stack.weights(job_id) == reference_weights()  # bit for bit the uninterrupted φ


def test_a_worker_stopped_mid_job_puts_it_back_for_another_to_resume(stack):
    job_id = stack.submit({**LONG, "register_as": "stopped"})
    worker, checkpoint = stack.running_with_checkpoint(job_id)
    worker.kill(signal.SIGTERM)  # warm shutdown: docker stop, a pre-empted machine
    assert worker.wait(60) == 0, worker.text()
    assert worker.ran(job_id, "queued") == 1
    stack.replace(worker).wait_ready()
    job = stack.wait_final(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1  # a clean stop costs no attempt
    statuses = stack.statuses(job_id)
    assert [s["status"] for s in statuses] == ["queued", "running", "queued", "running", "succeeded"]
    assert statuses[3]["resumed_from"] >= checkpoint
    assert len(stack.versions(job_id)) == 1
    assert stack.weights(job_id) == reference_weights()


def test_cancel_a_job_running_on_a_worker_keeps_its_checkpoint(stack):
    endless = {**LONG, "outer_iterations": 5000}  # canceled long before its end, however fast the worker
    job_id = stack.submit({**endless, "register_as": "canceled"})
    worker, checkpoint = stack.running_with_checkpoint(job_id)
    r = httpx.post(f"{stack.api.url}/v1/jobs/{job_id}/cancel", timeout=30)
    assert r.status_code == 202 and r.json()["cancel_requested"]
    job = stack.wait_final(job_id, 60)
    assert job["status"] == "canceled" and job["result"] is None
    assert job["progress"]["completed"] < endless["outer_iterations"]
    assert job["checkpoint"] >= checkpoint
    assert worker.ran(job_id, "canceled") == 1
    assert stack.versions(job_id) == []
    assert worker.proc.poll() is None  # the worker goes on serving


def test_a_job_submitted_while_the_broker_is_down_runs_when_it_is_back(stack):
    stack.redis.stop()
    r = httpx.get(f"{stack.api.url}/readyz", timeout=30)
    assert r.status_code == 503 and r.json()["code"] == "runner_unavailable"
    job_id = stack.submit({**SMALL, "register_as": "brokerless"})
    time.sleep(2)  # a few sweeps fail meanwhile
    assert stack.row(job_id).status == "queued"
    stack.redis.start()
    job = stack.wait_final(job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert len(stack.versions(job_id)) == 1
    assert httpx.get(f"{stack.api.url}/readyz", timeout=30).status_code == 200


def test_jobs_survive_an_api_restart_while_workers_run(stack):
    a = stack.submit({**LONG, "register_as": "restart"})
    b = stack.submit({**SMALL, "seed": 2, "register_as": "restart"})
    wait_for(lambda: stack.row(a).progress_completed > 0, 60, "job a to progress", stack.logs)
    stack.api.stop(signal.SIGKILL)
    done = stack.row(a).progress_completed
    wait_for(lambda: stack.row(a).progress_completed > done, 60, "progress without the API", stack.logs)
    stack.api.start()
    c = stack.submit({**SMALL, "seed": 3, "register_as": "restart"})
    jobs = [stack.wait_final(i) for i in (a, b, c)]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3
    assert [j["attempts"] for j in jobs] == [1, 1, 1]
    assert sorted(j["result"]["version"] for j in jobs) == [1, 2, 3]
    assert [len(stack.versions(i)) for i in (a, b, c)] == [1, 1, 1]
    with stack.Session() as db:
        assert db.scalar(select(Job.id).where(Job.status.in_(("queued", "running")))) is None


def sweep_trials(stack, sweep_id: int) -> list[Job]:
    with stack.Session() as db:
        return list(db.scalars(select(Job).where(Job.parent_id == sweep_id).order_by(Job.id)))


def test_a_sweep_runs_its_trials_on_both_workers_at_once_and_registers_the_best(stack):
    space = {"outer_lr": [0.001, 0.003], "inner_steps": [1, 2]}
    sweep_id = stack.submit({"kind": "sweep", "base": SMALL, "space": space, "trials": 4, "register_as": "swept"})
    job = stack.wait_final(sweep_id)
    assert job["status"] == "succeeded", job["error"]
    trials = sweep_trials(stack, sweep_id)
    assert [t.status for t in trials] == ["succeeded"] * 4 and [t.attempts for t in trials] == [1] * 4
    assert all(sum(w.ran(t.id, "succeeded") for t in trials) >= 1 for w in stack.workers)  # both took trials
    overlap = [(a.id, b.id) for a in trials for b in trials
               if a.id < b.id and a.started_at < b.finished_at and b.started_at < a.finished_at]
    assert overlap, [(t.id, t.started_at, t.finished_at) for t in trials]  # two trials ran at the same time
    best = min(job["trials"], key=lambda t: (t["score"], t["trial"]))
    assert job["result"]["loss"] == "swept:1" and job["result"]["best_job"] == best["id"]
    assert len(stack.versions(sweep_id)) == 1 and all(stack.versions(t.id) == [] for t in trials)


def test_a_worker_killed_mid_sweep_still_ends_every_trial_and_registers_once(stack):
    sweep_id = stack.submit({"kind": "sweep", "base": LONG, "space": {"outer_lr": [0.001, 0.002], "seed": [1, 2]},
                             "trials": 4, "register_as": "swept-killed"})
    wait_for(lambda: len(sweep_trials(stack, sweep_id)) == 4, 30, "the trials", stack.logs)
    victim = sweep_trials(stack, sweep_id)[0].id
    worker, _ = stack.running_with_checkpoint(victim)
    worker.kill(signal.SIGKILL)
    worker.wait()
    stack.replace(worker).wait_ready()
    job = stack.wait_final(sweep_id, 300)
    assert job["status"] == "succeeded", job["error"]
    trials = sweep_trials(stack, sweep_id)
    assert [t.status for t in trials] == ["succeeded"] * 4
    assert next(t for t in trials if t.id == victim).attempts == 2  # resumed after the kill
    assert len(stack.versions(sweep_id)) == 1 and job["result"]["loss"] == "swept-killed:1"
    with stack.Session() as db:
        assert db.scalar(select(LossVersion.id).join(LossVersion.loss).where(Loss.name == "swept-killed")
                         .where(LossVersion.job_id != sweep_id)) is None
