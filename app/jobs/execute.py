"""run_job(job_id, owner): the one path that executes a job, whoever calls it (the embedded
runner process or a Celery worker). No web framework here.

A job row is claimed with a lease: ``owner`` plus a ``heartbeat_at`` that a background thread
renews. A live lease held by someone else means "do nothing"; an expired one may be taken
over, and the run resumes from the job's latest checkpoint. Every write checks that we still
own the lease, and the loss version is registered in the same transaction that marks the job
succeeded, behind a unique constraint on the producing job: exactly once, whatever happens.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from datetime import timedelta
from math import gcd
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from app.core.config import Settings, get_settings
from app.db.models import (
    CANCELED,
    FAILED,
    META_TEST,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SWEEP,
    Checkpoint,
    Job,
    JobEvent,
    JobFile,
    LossVersion,
    utcnow,
)
from app.db.session import get_sessionmaker
from app.jobs.tracking import Tracker
from app.services import datasets, registry
from ml3core import ConfigError, Hooks
from ml3core.checkpoint import checkpoint_iteration
from ml3core.config import json_clean as clean

log = logging.getLogger("ml3.execute")


class LeaseLost(Exception):
    """Another runner took the job over: stop without writing anything."""


class Stopped(Exception):
    """Raised from a progress callback of a phase without ``should_stop`` (a meta-test): the job was
    cancelled, its lease lost or its runner is stopping; ``meta_test`` lets it propagate."""


class Lease:
    """Owns a claimed job: heartbeats it in a thread, notices cancel requests and lost leases."""

    def __init__(self, Session, job_id: int, owner: str, settings: Settings, stop: threading.Event | None):
        self.Session, self.job_id, self.owner = Session, job_id, owner
        self.interval = min(1.0, settings.lease_seconds / 3)
        self.stop = stop or threading.Event()
        self.lost, self.cancel, self._done = threading.Event(), threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"lease-{job_id}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def _loop(self):
        while not self._done.wait(self.interval):
            try:
                self.beat()
            except LeaseLost:  # the job ended (or was taken over) while this thread slept
                return
            except Exception:  # a busy database must not kill the heartbeat; the next beat retries
                log.exception("heartbeat of job %s failed", self.job_id)

    def beat(self):
        """Renew the lease if we still own it; note a cancel request."""
        with self.Session.begin() as db:
            cancel = db.scalar(update(Job).where(Job.id == self.job_id, Job.owner == self.owner)
                               .values(heartbeat_at=utcnow()).returning(Job.cancel_requested))
        if cancel is None:
            self.lost.set()
            raise LeaseLost(self.job_id)
        if cancel:
            self.cancel.set()

    def should_stop(self) -> bool:
        return self.lost.is_set() or self.cancel.is_set() or self.stop.is_set()

    def write(self, db, **values) -> None:
        """Inside a transaction: update the job row only while we own it."""
        res = db.execute(update(Job).where(Job.id == self.job_id, Job.owner == self.owner)
                         .values(heartbeat_at=utcnow(), **values))
        if res.rowcount != 1:
            self.lost.set()
            raise LeaseLost(self.job_id)


def claim(Session, job_id: int, owner: str, settings: Settings) -> Job | None:
    """Take the job if it is queued, or running under our own or an expired lease."""
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.lease_seconds)
    with Session.begin() as db:
        res = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_((QUEUED, RUNNING)), Job.kind != SWEEP,  # sweeps are driven
                   or_(Job.owner.is_(None), Job.owner == owner, Job.heartbeat_at < cutoff))
            .values(owner=owner, heartbeat_at=now, status=RUNNING, attempts=Job.attempts + 1)
        )
        if res.rowcount != 1:
            return None
        job = db.get(Job, job_id)
        job.started_at = job.started_at or now
        if job.cancel_requested:
            finish(db, job, CANCELED)
            return None
        if job.attempts > settings.max_attempts:
            finish(db, job, FAILED, error={"code": "too_many_attempts",
                                            "detail": f"gave up after {job.attempts - 1} attempts"})
            return None
        resumed = db.scalar(select(Checkpoint.iteration).where(Checkpoint.job_id == job_id))
        db.add(JobEvent(job_id=job_id, type="status",
                        data={"status": RUNNING, "attempt": job.attempts, "resumed_from": resumed}))
        return job


def finish(db, job: Job, status: str, **values) -> None:
    """In ``db``'s transaction: a final status, its time and its event; the lease is freed."""
    for k, v in values.items():
        setattr(job, k, v)
    job.status, job.owner, job.heartbeat_at, job.finished_at = status, None, None, utcnow()
    data = {"status": status, **{k: values[k] for k in ("error", "result") if k in values}}
    db.add(JobEvent(job_id=job.id, type="status", data=data))


def run_job(job_id: int, owner: str, settings: Settings | None = None,
            stop: threading.Event | None = None) -> str | None:
    """Run a job to a final status, or until ``stop`` is set (then it is queued again, to resume
    from its checkpoint). Returns the status it left the job in, or None if not ours to run."""
    settings = settings or get_settings()
    datasets.use_database(settings.db_url)  # the dataset family reads uploads from this database
    Session = get_sessionmaker(settings.db_url)
    job = claim(Session, job_id, owner, settings)
    if job is None:
        return None
    lease = Lease(Session, job_id, owner, settings, stop)
    try:
        with lease:
            try:
                if job.kind == META_TEST:
                    return _meta_test(Session, job, lease)
                return _meta_train(Session, job, lease, settings)
            except Stopped:
                return _stopped(Session, lease)
    except LeaseLost:
        log.warning("job %s: lease lost to another runner; leaving it", job_id)
        return None
    except Exception as e:
        code = "invalid_spec" if isinstance(e, ConfigError) else "execution_error"
        detail = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        log.error("job %s failed: %s", job_id, "".join(traceback.format_exception(e)))
        return _end(Session, lease, FAILED, error={"code": code, "detail": detail})


def _end(Session, lease: Lease, status: str, files: dict | None = None, register=None,
         **values) -> str | None:
    """Write a final (or re-queued) state in one transaction, only while we own the lease."""
    for attempt in range(5):
        try:
            with Session.begin() as db:
                lease.write(db)
                job = db.get(Job, lease.job_id)
                if register is not None:
                    values["result"] = register(db, job)
                if status == QUEUED:  # stopped by the runner: free the lease, keep the attempt count fair
                    job.status, job.owner, job.heartbeat_at = QUEUED, None, None
                    job.enqueued_at = None  # its message was consumed: the Celery runner sends a new one
                    job.attempts -= 1
                    db.add(JobEvent(job_id=job.id, type="status",
                                    data={"status": QUEUED, "reason": "runner stopped"}))
                else:
                    finish(db, job, status, **values)
                for name, (media_type, data) in (files or {}).items():
                    db.merge(JobFile(job_id=job.id, name=name, media_type=media_type, data=data))
            return status
        except LeaseLost:
            return None
        except IntegrityError:  # another job took the same next version number: try again
            if attempt == 4:
                raise
    return None


def _event(Session, job_id: int, type_: str, data: dict) -> None:
    """One event of a job, outside the lease (a tracking warning: it must not stop the job)."""
    log.warning("job %s: %s", job_id, data.get("detail"))
    try:
        with Session.begin() as db:
            db.add(JobEvent(job_id=job_id, type=type_, data=data))
    except Exception:  # noqa: BLE001 -- a warning that cannot be stored is in the log
        log.exception("job %s: the warning event was not stored", job_id)


def _stopped(Session, lease: Lease) -> str | None:
    if lease.lost.is_set():
        return None
    return _end(Session, lease, CANCELED if lease.cancel.is_set() else QUEUED)


def _meta_train(Session, job: Job, lease: Lease, settings: Settings) -> str | None:
    from ml3core.api import meta_train, parse_spec

    plan = parse_spec(job.plan)
    total, eval_every = plan.train.outer_iterations, plan.train.eval_every
    with Session() as db:
        resume = db.scalar(select(Checkpoint.data).where(Checkpoint.job_id == job.id))

    tracker = Tracker.for_plan(plan, f"job-{job.id}", Path(settings.data_dir) / "tensorboard",
                               warn=lambda line: _event(Session, job.id, "warning", {"detail": line}))
    tracker.params(plan.to_dict())

    def on_progress(done, total, metrics):
        metrics = clean(metrics)
        evaluated = done % eval_every == 0 or done == total  # the curves' points: stored and tracked
        if evaluated:
            tracker.metrics(done, metrics)
        with Session.begin() as db:
            lease.write(db, progress_completed=done, progress_total=total, metrics=metrics)
            db.add(JobEvent(job_id=job.id, type="progress",
                            data={"completed": done, "total": total, "unit": "iterations", "phase": "meta-train"}))
            if evaluated:
                db.add(JobEvent(job_id=job.id, type="metrics", data=metrics))

    def on_checkpoint(blob: bytes):
        with Session.begin() as db:
            lease.write(db)
            db.merge(Checkpoint(job_id=job.id, iteration=checkpoint_iteration(blob), data=blob,
                                created_at=utcnow()))

    hooks = Hooks(on_progress=on_progress, should_stop=lease.should_stop, on_checkpoint=on_checkpoint,
                  progress_every=gcd(settings.progress_every, eval_every),
                  checkpoint_every=settings.checkpoint_every)
    try:
        out = meta_train(plan, hooks, resume=resume, on_phase=PhaseEvents(Session, lease, job))
    except BaseException:
        tracker.close("FAILED")
        raise
    if out.stopped:
        tracker.close("KILLED")
        return _stopped(Session, lease)
    tracker.finish(out)

    def register(db, job):
        if job.parent_id is not None and out.bundle is not None:  # a sweep's trial: its sweep registers the best
            return trial_result(job, out)
        if out.bundle is None:  # nothing learned (0 outer iterations): the job says so, the registry is untouched
            return {"loss": None, "warnings": out.report.get("warnings", [])}
        name = job.register_as or plan.family.name
        if db.scalar(select(LossVersion.id).where(LossVersion.job_id == job.id)) is not None:
            raise LeaseLost(job.id)  # registered already: someone else finished this job
        v = registry.register(db, name, out.bundle, job.id, clean(out.bundle.spec.get("metrics")))
        return {"loss": f"{name}:{v.version}", "name": name, "version": v.version, "sha256": v.sha256,
                "published_seed": out.report.get("published_seed"), "verdict": out.report.get("verdict"),
                "horizon": out.report.get("published_horizon"), "warnings": out.report.get("warnings", [])}

    files = {"report.json": ("application/json", json.dumps(clean(out.report)).encode())}
    files.update({name: ("image/png", png) for name, png in out.figures.items()})
    if job.parent_id is not None and out.bundle is not None:  # kept for the sweep, which may register it
        files.update({name: ("application/octet-stream", data) for name, data in out.bundle.files.items()})
    return _end(Session, lease, SUCCEEDED, files=files, register=register,
                progress_completed=total, progress_total=total)


def trial_result(job: Job, out) -> dict:
    """A sweep trial's result: its published loss's ratios against the tuned baseline at each meta-validation
    horizon (what the sweep ranks by), and no registered loss."""
    v = out.report["validation"]
    i = v["chosen_index"]
    return {"loss": None, "trial_of": job.parent_id, "published_seed": out.report.get("published_seed"),
            "validation_ratios": {h: r[i] for h, r in v["ratios"].items()}, "verdict": out.report.get("verdict"),
            "warnings": out.report.get("warnings", [])}


class PhaseEvents:
    """on_phase(phase, done, total) of ``meta_train``: progress events of the phases after
    meta-training (at most one a second, and each phase's first and last); raises ``Stopped`` once
    the job should stop (cancel, lost lease, runner stopping), as ``should_stop`` does for
    meta-training. The job row keeps its meta-train progress; its metrics note the phase and how
    long meta-training took, so a speed shown for the job counts meta-training only."""

    def __init__(self, Session, lease: Lease, job: Job, row_progress: bool = False):
        self.Session, self.lease, self.job_id, self.row_progress = Session, lease, job.id, row_progress
        self.started_at, self.phase, self.last, self.total = job.started_at, None, 0.0, 1

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.lease.should_stop():  # a meta-test reports every 1% of its steps: it stops within one
            raise Stopped(self.job_id)
        now = time.monotonic()
        new = phase != self.phase
        if not new and done < total and now - self.last < 1.0:
            return
        self.last, self.total = now, total
        unit = "steps" if phase in ("meta-test", "validation") else "parts"
        with self.Session.begin() as db:
            values = {}
            if self.row_progress:
                values = {"progress_completed": done, "progress_total": total, "progress_unit": unit}
            elif new and self.phase is None:  # meta-training just ended
                job = db.get(Job, self.job_id)
                seconds = (utcnow() - self.started_at).total_seconds() if self.started_at else None
                values = {"metrics": {**(job.metrics or {}), "meta_train_seconds": seconds}}
            if new:
                values.setdefault("metrics", dict(db.get(Job, self.job_id).metrics or {}))["phase"] = phase
            self.lease.write(db, **values)
            db.add(JobEvent(job_id=self.job_id, type="progress",
                            data={"completed": done, "total": total, "unit": unit, "phase": phase}))
        self.phase = phase


def _meta_test(Session, job: Job, lease: Lease) -> str | None:
    from ml3core.api import run_meta_test

    with Session() as db:
        bundle = registry.load_bundle(db, job.loss_version_id)
    plan = dict(job.plan)
    device = plan.pop("device", "cpu")
    ref = plan.pop("loss")
    on_phase = PhaseEvents(Session, lease, job, row_progress=True)
    report, figures = run_meta_test(bundle, plan.get("spec"), device,
                                    progress=lambda done, total: on_phase("meta-test", done, total))
    report = clean(report)
    files = {"report.json": ("application/json", json.dumps(report).encode())}
    files.update({name: ("image/png", png) for name, png in figures.items()})
    result = {"loss": ref, "report": f"/v1/jobs/{job.id}/report",
              "figures": {name: f"/v1/jobs/{job.id}/figures/{name}" for name in figures},
              "horizon": report["horizon"], "final": report["final"]}
    return _end(Session, lease, SUCCEEDED, files=files, result=result, progress_completed=on_phase.total,
                progress_total=on_phase.total)
