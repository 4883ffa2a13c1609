"""Driving a sweep: one idempotent step that reads the sweep's trials from the database, creates the
ones missing (up to ``parallel`` in flight), propagates a cancel, and once every trial is final
registers the best trial's loss and ends the sweep. Everything it needs is in the database, so any
process may take the step at any time, and a restarted API, runner or worker goes on where the sweep
was. Steps of one sweep take turns on its row (``lock_row``): two never create the same trial, and the
loss is registered once, in the transaction that ends the sweep (its job id is unique on the version).

Who steps: the submit route (the first trials start at once), the embedded runner's loop and the
Celery runner's sweep thread (every sweep that is not final), and a Celery worker after each trial it
ran (so a sweep goes on while the API is down). A sweep never takes a runner's slot: its trials do.
"""

from __future__ import annotations

from sqlalchemy import select

from app.core.config import Settings
from app.db.models import (
    CANCELED,
    FAILED,
    FINAL,
    META_TRAIN,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    SWEEP,
    Job,
    JobEvent,
    JobFile,
    utcnow,
)
from app.db.session import get_sessionmaker, lock_row
from app.jobs.execute import finish
from app.services import registry, sweeps
from app.services.jobs import insert_job, request_cancel
from ml3core.api import parse_spec
from ml3core.artifact import Bundle
from ml3core.config import json_clean as clean


def drive(settings: Settings, sweep_id: int) -> list[int]:
    """One step of the sweep ``sweep_id``; returns the ids of the trials it created (queued, committed)."""
    with get_sessionmaker(settings.db_url)() as db:
        lock_row(db, Job, sweep_id)
        sweep = db.get(Job, sweep_id)
        if sweep is None or sweep.kind != SWEEP or sweep.status in FINAL:
            db.rollback()
            return []
        created = _step(db, sweep)
        db.commit()
        return created


def _step(db, sweep: Job) -> list[int]:
    plan = sweep.plan
    children = list(db.scalars(select(Job).where(Job.parent_id == sweep.id).order_by(Job.id)))
    if sweep.status == QUEUED:
        sweep.status, sweep.started_at = RUNNING, sweep.started_at or utcnow()
        db.add(JobEvent(job_id=sweep.id, type="status", data={"status": RUNNING}))
    created = []
    if sweep.cancel_requested:
        request_cancel(db, [c.id for c in children if c.status not in FINAL])
        db.flush()
        for c in children:
            db.refresh(c)
    else:
        active = sum(c.status not in FINAL for c in children)
        for _ in range(max(0, min(plan["trials"] - len(children), plan["parallel"] - active))):
            children.append(_new_trial(db, sweep, children))
            created.append(children[-1].id)
    done = sum(c.status in FINAL for c in children)
    if done != sweep.progress_completed:
        sweep.progress_completed = done
        db.add(JobEvent(job_id=sweep.id, type="progress",
                        data={"completed": done, "total": plan["trials"], "unit": "trials", "phase": "sweep"}))
    if done == len(children) and (sweep.cancel_requested or len(children) == plan["trials"]):
        _end(db, sweep, children)
    return created


def _new_trial(db, sweep: Job, children: list[Job]) -> Job:
    plan, n = sweep.plan, len(children)
    if plan["sampler"] == "tpe":
        history = [(sweeps.params_of(c, plan), c.status, sweeps.score(c.result, plan["horizons"])[0])
                   for c in children]
        params = sweeps.tpe_point(plan["dims"], plan["seed"], history)
    else:
        params = sweeps.points(plan["dims"], plan["sampler"], plan["trials"], plan["seed"])[n]
    spec = sweeps.apply(plan["base"], params)
    trial = parse_spec(spec)
    return insert_job(db, META_TRAIN, spec, trial.to_dict(), api_key_id=sweep.api_key_id, parent_id=sweep.id,
                      progress_total=trial.train.outer_iterations, progress_unit="iterations")


def _end(db, sweep: Job, children: list[Job]) -> None:
    """Every trial is final: register the best one's loss under the sweep's name, or say why none."""
    plan = sweep.plan
    rows = [sweeps.trial_json(i, c, plan) for i, c in enumerate(children)]
    board = sweeps.leaderboard(rows)
    result = {"metric": sweeps.METRIC.format(horizons=plan["horizons"]), "horizons": plan["horizons"],
              "trials": rows, "leaderboard": [t["trial"] for t in board], "loss": None}
    if sweep.cancel_requested:
        finish(db, sweep, CANCELED, result=result)
        return
    best = board[0] if board and board[0]["score"] is not None else None
    if best is None:
        failed = sum(t["status"] != SUCCEEDED for t in rows)
        finish(db, sweep, FAILED, result=result, error={
            "code": "no_trial_scored", "detail": f"no trial of {len(rows)} has a score ({failed} did not succeed, "
            "the others diverged at a meta-validation horizon); see result.trials"})
        return
    files = {f.name: f.data for f in db.scalars(select(JobFile).where(JobFile.job_id == best["id"]))}
    bundle = Bundle.from_files(files)
    version = registry.register(db, sweep.register_as, bundle, sweep.id, clean(bundle.spec.get("metrics")))
    result.update({"loss": f"{sweep.register_as}:{version.version}", "name": sweep.register_as,
                   "version": version.version, "sha256": version.sha256, "best_trial": best["trial"],
                   "best_job": best["id"], "score": best["score"], "params": best["params"]})
    finish(db, sweep, SUCCEEDED, result=result)


def drive_active(settings: Settings) -> list[int]:
    """A step of every sweep that is not final; the trials created."""
    with get_sessionmaker(settings.db_url)() as db:
        ids = list(db.scalars(select(Job.id).where(Job.kind == SWEEP, Job.status.in_((QUEUED, RUNNING)))
                              .order_by(Job.id)))
    return [child for sweep_id in ids for child in drive(settings, sweep_id)]


def drive_parent(settings: Settings, job_id: int) -> list[int]:
    """After a job ran: a step of its sweep, if it is a trial (the next trials start, or the sweep ends)."""
    with get_sessionmaker(settings.db_url)() as db:
        parent = db.scalar(select(Job.parent_id).where(Job.id == job_id))
    return drive(settings, parent) if parent is not None else []
