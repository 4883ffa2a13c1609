"""Job creation: a queued row, committed, then handed to the runner. Used by every route that
submits a job (``POST /v1/jobs``, ``POST /v1/losses/{id}/meta-test``)."""

from __future__ import annotations

import hashlib
import json
import logging

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings
from app.core.errors import Problem
from app.db.models import CANCELED, FINAL, QUEUED, ApiKey, Job, JobEvent, utcnow
from app.db.session import lock_row
from app.services import datasets, limits

log = logging.getLogger("ml3.api")


def request_hash(route: str, body) -> str:
    return hashlib.sha256(json.dumps([route, body], sort_keys=True).encode()).hexdigest()


def scoped(key_id: int | None, idempotency_key: str | None) -> str | None:
    """What the jobs table stores for an Idempotency-Key: a digest of the API key's id and the header,
    so two keys that pick the same value never see each other's jobs (its unique index holds per key)."""
    if idempotency_key is None:
        return None
    return hashlib.sha256(f"{key_id if key_id is not None else '-'}:{idempotency_key}".encode()).hexdigest()


def insert_job(db, kind: str, spec: dict, plan: dict, **fields) -> Job:
    """Add a queued job and its first event to ``db``'s transaction (flushed: it has its id)."""
    job = Job(kind=kind, status=QUEUED, spec=spec, plan=plan, progress_completed=0, cancel_requested=False,
              attempts=0, **fields)
    datasets.lock_for_job(db, job)  # its data set cannot be deleted before the job is committed
    db.add(job)
    db.flush()
    db.add(JobEvent(job_id=job.id, type="status", data={"status": QUEUED}))
    return job


def request_cancel(db, job_ids: list[int]) -> None:
    """In ``db``'s transaction: a queued job ends canceled at once; a running one sees the flag at its next
    heartbeat. Final jobs are left as they are."""
    now = utcnow()
    for job_id in job_ids:
        res = db.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED)
                         .values(status=CANCELED, cancel_requested=True, finished_at=now, updated_at=now))
        if res.rowcount == 1:
            db.add(JobEvent(job_id=job_id, type="status", data={"status": CANCELED}))
        else:
            db.execute(update(Job).where(Job.id == job_id, Job.status.not_in(FINAL))
                       .values(cancel_requested=True, updated_at=now))


def create_job(db, settings: Settings, runner, kind: str, spec: dict, plan: dict, idempotency_key: str | None,
               route: str, adding: int = 1, **fields) -> Job:
    """Insert a queued job and commit, then enqueue it on ``runner``; honour Idempotency-Key, per API
    key. ``adding``: the active jobs this submit counts as against the key's limit (a sweep: 1 + its
    trials). Returns the new job, or the one an earlier request with the same key and body created (then
    nothing is written; that job comes detached, with its fields loaded)."""
    digest = request_hash(route, spec)
    key_id = fields.get("api_key_id")
    idempotency_key = scoped(key_id, idempotency_key)
    for _ in range(2):
        # The key's row stays locked until the transaction ends: concurrent submits with one key take turns
        # on it, so its count of active jobs holds, and a retry with the same Idempotency-Key waits for the
        # first and finds its job. Every way out ends the transaction here, not when the request is torn
        # down (on SQLite the lock is the database's one writer lock, held meanwhile for every writer).
        try:
            if key_id is not None:
                lock_row(db, ApiKey, key_id)
            if idempotency_key is not None:
                job = db.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
                if job is not None:
                    if job.request_hash != digest:
                        raise Problem(422, "idempotency_key_reused",
                                      "Idempotency-Key was already used with a different request body")
                    db.expunge(job)  # the rollback leaves its loaded fields as read
                    db.rollback()  # nothing written
                    return job
            limits.check_active_jobs(db, key_id, settings, adding)
            job = insert_job(db, kind, spec, plan, idempotency_key=idempotency_key, request_hash=digest, **fields)
            db.commit()
            break
        except IntegrityError:  # the same key raced in from another request: answer with that job
            db.rollback()
        except BaseException:  # a refusal (429, 422) or an error: the key's row is free at once
            db.rollback()
            raise
    else:
        raise Problem(409, "conflict", "could not create the job; retry")
    try:
        runner.enqueue(job.id)
    except Exception:  # the row is the truth: a runner that polls or a later retry still finds it
        log.exception("enqueue of job %s failed", job.id)
    return job
