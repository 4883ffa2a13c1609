"""The Celery worker: task ``ml3.run_job(job_id)`` runs a job through ``app.jobs.execute.run_job``, the
same path as the embedded runner. Only the job id travels; the job row is the truth (no result
backend) and its lease turns a duplicate delivery into a no-op.

Pools: ``ml3 worker`` runs the solo pool (one job at a time, in the worker's own process), or the
threads pool for ``--queues cpu --concurrency N`` with N > 1. Neither forks: CUDA, and torch's
OpenMP threads, break in a child forked after they started, and a GPU worker runs one job at a
time anyway. Not forking also lets a warm shutdown (SIGTERM) reach the running job: it
checkpoints, goes back to the queue and resumes on the next worker. Scale CPU work with more worker
processes (each with ML3_RUNNER_THREADS torch threads), GPU work with one worker per GPU.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import Celery, signals
from celery.exceptions import Reject

from app.core.config import get_settings
from app.db.models import QUEUED
from app.jobs.runner import TASK, CeleryRunner, celery_config, new_owner
from app.jobs.sweep import drive_parent

log = logging.getLogger("ml3.worker")
settings = get_settings()
app = Celery("ml3")
app.conf.update(celery_config(settings))
runner = CeleryRunner(settings, app=app)  # puts a job that a shutdown stopped back in the queue
stop = threading.Event()


@signals.worker_shutting_down.connect
def _shutting_down(**_) -> None:
    stop.set()  # the running job checkpoints at its next iteration and returns


@app.task(name=TASK, ignore_result=True)
def run_job(job_id) -> str | None:
    from app.jobs.execute import run_job as execute  # torch loads in the process that runs jobs

    if not isinstance(job_id, int):
        log.error("dropped a message with job id %r: not an integer", job_id)
        return None
    try:
        status = execute(job_id, new_owner(), settings, stop)
    except Exception:  # the database is unreachable: give the message back and let it come again
        log.exception("job %s: could not run", job_id)
        time.sleep(settings.poll_seconds)
        raise Reject(requeue=True) from None
    log.info("job %s -> %s", job_id, status or "not run (finished, or leased by another runner)")
    if status == QUEUED:
        runner.enqueue(job_id)
    elif status is not None:
        _next_trials(job_id)
    return status


def _next_trials(job_id: int) -> None:
    """A sweep's trial ended: its sweep starts the next trials (or ends) now, even with the API down."""
    try:
        for trial in drive_parent(settings, job_id):
            runner.enqueue(trial)
    except Exception:  # the API's sweep thread takes the step instead
        log.exception("job %s: could not step its sweep", job_id)


def start(queues: str = "cpu", concurrency: int = 1, loglevel: str = "info") -> None:
    """Run a worker on ``queues`` until SIGTERM (warm shutdown: the running job is put back)."""
    import torch

    import ml3core.api  # noqa: F401  (imported now, not when the first job arrives)

    torch.set_num_threads(settings.runner_threads)
    pool = "solo" if concurrency == 1 else "threads"
    app.worker_main(["worker", f"--queues={queues}", f"--pool={pool}", f"--concurrency={concurrency}",
                     f"--hostname=ml3-{queues}-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
                     f"--loglevel={loglevel}"])
