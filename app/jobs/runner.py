"""Job runners behind one small interface: ``enqueue(job_id)``, ``start()``, ``stop()``, ``problem()``.

- ``LocalRunner`` (ML3_RUNNER=local, the default): a separate process (``python -m app.jobs.runner``)
  that polls the jobs table for queued jobs and expired leases, so a long job never slows a
  request and a restarted server resumes the jobs that were running when it stopped.
- ``CeleryRunner`` (ML3_RUNNER=celery): sends the task ``ml3.run_job`` by name to queue ``gpu``
  (device cuda) or ``cpu``; a worker (``worker/``) calls ``app.jobs.execute.run_job``, the same function.
  A sweep thread sends the jobs that have no message (see ``CeleryRunner.sweep``).
- ``NoRunner`` (ML3_RUNNER=none): jobs wait for runners started elsewhere.

The API enqueues only after the job row is committed, so a runner never sees a missing job.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from app.core.config import Settings, get_settings
from app.core.errors import invalid
from app.db.models import QUEUED, RUNNING, SWEEP, Job, utcnow
from app.db.session import get_sessionmaker
from app.jobs.allocator import keep_freed_memory
from app.jobs.sweep import drive_active

log = logging.getLogger("ml3.runner")


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def next_job(settings: Settings) -> int | None:
    """The oldest job that is queued or whose runner stopped heartbeating."""
    cutoff = utcnow() - timedelta(seconds=settings.lease_seconds)
    with get_sessionmaker(settings.db_url)() as db:
        return db.scalar(
            select(Job.id)
            .where(Job.kind != SWEEP,  # a sweep is driven (drive_active), its trials run
                   or_(Job.status == QUEUED,
                       and_(Job.status == RUNNING, or_(Job.owner.is_(None), Job.heartbeat_at < cutoff))))
            .order_by(Job.id).limit(1)
        )


def serve(settings: Settings, stop: threading.Event) -> None:
    """Run jobs one at a time until ``stop`` is set."""
    from app.jobs.execute import run_job

    owner = new_owner()
    log.info("runner %s polling %s", owner, settings.db_url)
    while not stop.is_set():
        try:
            drive_active(settings)  # sweeps create their next trials (queued) or end
            job_id = next_job(settings)
            if job_id is None:
                stop.wait(settings.poll_seconds)
                continue
            status = run_job(job_id, owner, settings, stop)
            log.info("job %s -> %s", job_id, status)
            if status is None:  # someone else holds it: do not spin on it
                stop.wait(settings.poll_seconds)
        except Exception:
            log.exception("runner loop error")
            stop.wait(settings.poll_seconds)


def _watch_parent(stop: threading.Event, parent: int) -> None:
    """Stop when the server that started us is gone (even after a SIGKILL), so no orphan runs on."""
    while not stop.wait(0.5):
        if os.getppid() != parent:
            log.warning("server process %s is gone; stopping", parent)
            stop.set()


def main() -> None:
    import torch

    import ml3core.api  # noqa: F401  (imported now, while the server starts, not when the first job does)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s %(message)s")
    settings = get_settings()
    torch.set_num_threads(settings.runner_threads)
    keep_freed_memory()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    parent = int(os.environ.get("ML3_RUNNER_PARENT", "0"))
    if parent:
        threading.Thread(target=_watch_parent, args=(stop, parent), daemon=True).start()
    serve(settings, stop)


def release_jobs_of(settings: Settings, pid: int) -> int:
    """Hand back the running jobs of a dead runner process of this host (its owner names host and pid):
    the next runner resumes them from their checkpoints now, not when their lease expires."""
    prefix = f"{socket.gethostname()}:{pid}:"
    with get_sessionmaker(settings.db_url).begin() as db:
        res = db.execute(update(Job).where(Job.status == RUNNING, Job.owner.startswith(prefix, autoescape=True))
                         .values(owner=None, heartbeat_at=None))
    return res.rowcount


class LocalRunner:
    """The runner process, supervised: a thread restarts it when it dies (after 1, 2, 4, ... up to
    ``MAX_BACKOFF`` seconds; back to 1 once it has run ``HEALTHY`` seconds), and the jobs it held are
    handed back so the new process resumes them from their checkpoints, with no new submit."""

    MAX_BACKOFF, HEALTHY = 60.0, 60.0

    def __init__(self, settings: Settings):
        self.settings, self.proc = settings, None
        self.restarts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def start(self) -> None:
        self._stop.clear()
        with self._lock:
            self._spawn()
        self._thread = threading.Thread(target=self._supervise, daemon=True, name="ml3-runner-supervisor")
        self._thread.start()

    def _spawn(self) -> None:
        env = {**os.environ, **self.settings.env(), "ML3_RUNNER_PARENT": str(os.getpid())}
        self.proc = subprocess.Popen([sys.executable, "-m", "app.jobs.runner"], env=env)
        self._started = time.monotonic()

    def _restart(self, dead: subprocess.Popen) -> None:
        """Under the lock: replace ``dead`` (unless someone already did) and free its jobs."""
        if self.proc is not dead or self._stop.is_set():
            return
        try:
            freed = release_jobs_of(self.settings, dead.pid)
            if freed:
                log.warning("handed back %d job(s) of the dead runner %s", freed, dead.pid)
        except Exception as e:  # the database is down: the jobs' leases expire instead
            log.warning("could not hand back the jobs of runner %s: %s", dead.pid, e)
        self._spawn()
        self.restarts += 1

    def _supervise(self) -> None:
        delay = 1.0
        while not self._stop.wait(0.5):
            dead = self.proc
            if dead is None or dead.poll() is None:
                continue
            if time.monotonic() - self._started > self.HEALTHY:
                delay = 1.0
            log.warning("runner exited with %s; restarting in %.0f s", dead.returncode, delay)
            if self._stop.wait(delay):
                return
            with self._lock:
                self._restart(dead)
            delay = min(2 * delay, self.MAX_BACKOFF)

    def enqueue(self, job_id: int) -> None:
        """The runner polls the table; a submit restarts a dead runner at once (no backoff wait)."""
        with self._lock:
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("runner exited with %s; restarting", self.proc.returncode)
                self._restart(self.proc)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM: the running job checkpoints and is queued again for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                return
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def problem(self) -> str | None:
        if self.proc is None or self.proc.poll() is not None:
            return "the job runner process is not running"
        return None


TASK = "ml3.run_job"


def celery_config(settings: Settings) -> dict:
    """The one Celery configuration of the API (which sends) and the workers (which consume)."""
    return {
        "broker_url": settings.broker_url,
        # Redis gives an unacknowledged message to another worker after this: harmless (the lease)
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        "task_acks_late": True,  # acknowledged when the job returns, so a dead worker's job comes back
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,  # a busy worker holds no second job
        # a job needs the database, not the broker: it runs on through a broker outage, and its
        # message, which can no longer be acknowledged, comes back as a harmless duplicate
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_ignore_result": True,  # no result backend: the job row is the truth
        "task_default_queue": "cpu",
        "worker_pool": "solo",  # see worker/celery_app.py
    }


DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,3})?")


def check_device(device, settings: Settings) -> None:
    """A job's device, checked at submit. The embedded runner (ML3_RUNNER=local) runs jobs with this
    process's torch: a device it cannot serve is a 422 now, not a job failing later. With a broker
    (celery) or runners elsewhere (none), ``cuda[:N]`` waits in queue ``gpu`` for a GPU worker."""
    if not isinstance(device, str) or not DEVICE.fullmatch(device):
        raise invalid("device", f"{str(device)[:40]!r} is no device: cpu, cuda or cuda:N")
    if device == "cpu" or settings.runner != "local":
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(device.partition(":")[2] or 0) >= count:
        raise invalid("device", f"{device!r}: the embedded runner (ML3_RUNNER=local) has {count} CUDA devices; "
                      "use cpu, or run GPU workers behind a broker (ML3_RUNNER=celery)")


def queue_for(plan: dict) -> str:
    return "gpu" if str(plan.get("device", "cpu")).startswith("cuda") else "cpu"


class CeleryRunner:
    """Sends ``ml3.run_job(job_id)`` by name (``app`` never imports ``worker``).

    ``jobs.enqueued_at`` says when a job's latest message was sent. Sending first marks the row
    (only if it still needs a message), so API replicas and workers racing for one job send one
    message; a failed send unmarks it. The sweep thread sends what has no message: jobs submitted
    while the broker was down, jobs a stopping worker put back, and jobs whose worker died (lease
    expired, nothing sent since). A duplicate message is harmless: the lease makes it a no-op."""

    def __init__(self, settings: Settings, app=None):
        self.settings, self._app = settings, app
        self._stop, self._thread = threading.Event(), None

    @property
    def Session(self):
        return get_sessionmaker(self.settings.db_url)

    @property
    def app(self):
        if self._app is None:
            from celery import Celery

            self._app = Celery("ml3", set_as_current=False)
            self._app.conf.update(celery_config(self.settings))
        return self._app

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._sweep_loop, daemon=True, name="ml3-sweep")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def enqueue(self, job_id: int) -> bool:
        return self.send(job_id, and_(Job.status == QUEUED, Job.enqueued_at.is_(None), Job.kind != SWEEP))

    def send(self, job_id: int, needs_message) -> bool:
        """Send the job's message if ``needs_message`` (a SQL condition) holds; False if not needed."""
        now = utcnow()
        with self.Session.begin() as db:
            plan = db.scalar(update(Job).where(Job.id == job_id, needs_message).values(enqueued_at=now)
                             .returning(Job.plan))
        if plan is None:
            return False
        try:
            self.app.send_task(TASK, args=[job_id], queue=queue_for(plan))
        except Exception:
            with self.Session.begin() as db:
                db.execute(update(Job).where(Job.id == job_id, Job.enqueued_at == now)
                           .values(enqueued_at=None))
            raise
        return True

    def sweep(self) -> list[int]:
        """Send every job that should have a message but may have none; returns their ids."""
        now = utcnow()
        lease_cutoff = now - timedelta(seconds=self.settings.lease_seconds)
        stale = now - timedelta(seconds=self.settings.visibility_timeout)  # lost in the broker?
        needs_message = and_(Job.kind != SWEEP, or_(  # a sweep is driven here (drive_active), not sent
            and_(Job.status == QUEUED, or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale)),
            and_(Job.status == RUNNING, Job.heartbeat_at < lease_cutoff,
                 or_(Job.enqueued_at.is_(None), Job.enqueued_at < Job.heartbeat_at, Job.enqueued_at < stale)),
        ))
        with self.Session() as db:
            ids = list(db.scalars(select(Job.id).where(needs_message).order_by(Job.id).limit(100)))
        return [job_id for job_id in ids if self.send(job_id, needs_message)]

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_seconds):
            try:
                drive_active(self.settings)  # sweeps: their new trials are sent just below
                sent = self.sweep()
                if sent:
                    log.info("sent jobs %s to the broker", sent)
            except Exception as e:  # broker or database down: the next round tries again
                log.warning("sweep: %s: %s", type(e).__name__, e)

    def problem(self) -> str | None:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as e:
            return f"broker unreachable: {type(e).__name__}: {e}"
        return None


class NoRunner:
    def __init__(self, settings: Settings):
        pass

    def start(self) -> None:
        pass

    def enqueue(self, job_id: int) -> None:
        pass

    def stop(self) -> None:
        pass

    def problem(self) -> str | None:
        return None


RUNNERS = {"local": LocalRunner, "celery": CeleryRunner, "none": NoRunner}


def make_runner(settings: Settings):
    return RUNNERS[settings.runner](settings)


if __name__ == "__main__":
    main()
