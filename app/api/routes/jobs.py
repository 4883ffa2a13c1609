"""Jobs: submit (202 + Location, Idempotency-Key), list, show, metrics, events (SSE), cancel, results."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app.api.deps import DB, READ, Id, IdempotencyKey, PageDep, ReadKey, SubmitKey
from app.api.head import head_of
from app.api.openapi import problems
from app.api.schemas import (
    JobBody,
    JobDetailOut,
    JobMetricsOut,
    JobOut,
    JobPage,
    ReportOut,
    SweepSpec,
    accepted,
    job_json,
)
from app.core.errors import Problem, invalid, not_found
from app.db.models import (
    FINAL,
    MAX_ID,
    META_TRAIN,
    STATUSES,
    SWEEP,
    Checkpoint,
    Job,
    JobEvent,
    JobFile,
)
from app.jobs.runner import check_device
from app.jobs.sweep import drive
from app.services import limits, registry, sweeps
from app.services.ids import Digits, is_digits
from app.services.jobs import create_job, request_cancel
from ml3core.api import parse_spec

log = logging.getLogger("ml3.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[READ])


@router.post("", status_code=202, summary="Submit a meta-train job or a sweep", response_model=JobOut,
             responses=problems(409, 413, 429))
def submit(request: Request, response: Response, db: DB, key: SubmitKey, spec: Annotated[JobBody, Body()],
           idempotency_key: IdempotencyKey = None) -> dict:
    settings = request.app.state.settings
    if isinstance(spec, SweepSpec):
        return submit_sweep(request, response, db, key, spec, idempotency_key)
    with request.app.state.write_slots.held(key.client, settings):  # 429 beyond max_key_writes at once
        body = spec.model_dump(exclude_unset=True)
        limits.check_arrays(body, settings)
        register_as = body.get("register_as")
        if register_as is not None:
            registry.check_name(register_as, "register_as")
        plan = parse_spec(body, ignore=("kind", "register_as"))  # ConfigError -> 422 naming the field
        limits.check_job(plan, settings)
        check_device(plan.train.device, settings)
        body.setdefault("kind", META_TRAIN)
        job = create_job(db, settings, request.app.state.runner, META_TRAIN, body, plan.to_dict(), idempotency_key,
                         "jobs", register_as=register_as or plan.family.name, api_key_id=key.key_id,
                         progress_total=plan.train.outer_iterations, progress_unit="iterations")
        return accepted(response, job)


def submit_sweep(request: Request, response: Response, db, key, spec: SweepSpec, idempotency_key) -> dict:
    """A sweep is checked whole (every key, every trial against the limits, its trials against the key's
    active jobs) before anything is stored; then its first trials are created at once."""
    settings, runner = request.app.state.settings, request.app.state.runner
    with request.app.state.write_slots.held(key.client, settings):
        body = spec.model_dump(exclude_unset=True)
        limits.check_arrays(body, settings)
        plan = sweeps.check_sweep(spec.model_dump(), settings)
        register_as = spec.register_as or plan["base"]["task"]["family"]
        registry.check_name(register_as, "register_as")
        check_device(plan["device"], settings)
        job = create_job(db, settings, runner, SWEEP, body, plan, idempotency_key, "jobs", adding=1 + spec.trials,
                         register_as=register_as, api_key_id=key.key_id, progress_total=spec.trials,
                         progress_unit="trials")
    try:
        for trial in drive(settings, job.id):
            runner.enqueue(trial)
    except Exception:  # the sweep is stored: the runner's loop takes its next step
        log.exception("first step of sweep %s failed", job.id)
    db.expire_all()
    return accepted(response, db.get(Job, job.id) or job)


@router.get("", summary="List jobs, newest first", response_model=JobPage)
def list_jobs(db: DB, page: PageDep, status: str | None = None, kind: str | None = None) -> dict:
    q = select(Job).order_by(Job.id.desc()).limit(page.limit + 1)
    if status is not None:
        if status not in STATUSES:
            raise invalid("status", f"one of {list(STATUSES)}")
        q = q.where(Job.status == status)
    if kind is not None:
        q = q.where(Job.kind == kind)
    if page.after is not None:
        q = q.where(Job.id < page.after)
    return page.result(list(db.scalars(q)), lambda j: j.id, job_json)


def get_job(db, job_id: int) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    return job


@router.get("/{job_id}", summary="A job: status, progress, latest metrics, error, result",
            response_model=JobDetailOut, response_model_exclude_unset=True)
def show(db: DB, job_id: Id) -> dict:
    job = get_job(db, job_id)
    files = list(db.scalars(select(JobFile.name).where(JobFile.job_id == job_id)))
    out = job_json(job, files)
    out["checkpoint"] = db.scalar(select(Checkpoint.iteration).where(Checkpoint.job_id == job_id))
    if job.kind == SWEEP:
        out["trials"] = sweeps.trials(db, job)
        out["leaderboard"] = [t["trial"] for t in sweeps.leaderboard(out["trials"])]  # best first
    return out


@router.get("/{job_id}/metrics", summary="Metric history (one entry per evaluation)", response_model=JobMetricsOut)
def metrics(db: DB, job_id: Id) -> dict:
    get_job(db, job_id)
    q = (select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
         .order_by(JobEvent.id))
    return {"job_id": job_id, "items": list(db.scalars(q))}


@router.post("/{job_id}/cancel", status_code=202, summary="Ask a job to stop (cooperative; checkpoint kept)",
             response_model=JobOut, responses=problems(409))
def cancel(db: DB, key: SubmitKey, job_id: Id) -> dict:
    job = get_job(db, job_id)
    if job.api_key_id != key.key_id and not key.allows("admin"):
        raise Problem(403, "not_your_job", f"job {job_id} was submitted with another key; cancelling it "
                      "needs that key or one with scope admin")
    if job.status in FINAL:
        raise Problem(409, "job_finished", f"job {job_id} is already {job.status}")
    # a queued job ends at once; a running one sees the flag at its next heartbeat; a sweep's trials too
    request_cancel(db, [job_id, *sweeps.trial_ids(db, job_id)])
    db.commit()
    db.refresh(job)
    return job_json(job)


def _file(db, job_id: int, name: str) -> JobFile:
    job = get_job(db, job_id)
    row = db.get(JobFile, (job_id, name))
    if row is None:
        if job.status not in FINAL:
            raise Problem(404, "not_ready", f"job {job_id} is {job.status}; {name} comes when it succeeds")
        raise not_found(f"{name} of job {job_id}")
    return row


@router.get("/{job_id}/report", summary="The report of a finished job (JSON)", response_model=ReportOut)
def report(db: DB, job_id: Id) -> Response:
    return Response(_file(db, job_id, "report.json").data, media_type="application/json")


@router.get("/{job_id}/figures/{name}", summary="A figure of a finished job (PNG)", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def figure(db: DB, job_id: Id, name: str) -> Response:
    if not name.endswith(".png"):
        raise not_found(f"figure {name!r}")
    return Response(_file(db, job_id, name).data, media_type="image/png")


@router.head("/{job_id}/report", summary="The report's headers (Content-Length), no body", response_class=Response)
def report_head(db: DB, job_id: Id) -> Response:
    return head_of(report(db, job_id))


@router.head("/{job_id}/figures/{name}", summary="A figure's headers (Content-Length), no body",
             response_class=Response)
def figure_head(db: DB, job_id: Id, name: str) -> Response:
    return head_of(figure(db, job_id, name))


def _sse(event: JobEvent) -> str:
    return f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.data)}\n\n"


class _Stream(StreamingResponse):
    """An event stream that holds one of its caller's ``max_streams`` slots until it ends, however it ends."""

    def __init__(self, content, release, **kwargs):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


@router.get("/{job_id}/events", summary="Server-Sent Events (progress, metrics, status) until a final status",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {
                "schema": {"type": "string"},
                "example": 'id: 7\nevent: progress\ndata: {"completed": 10, "total": 500}\n\n'}}}, **problems(429)})
async def events(request: Request, job_id: Id, key: ReadKey, last_event_id: Annotated[str | None, Header()] = None,
                 after: Annotated[int | None, Digits, Query(ge=0, le=MAX_ID)] = None) -> StreamingResponse:
    Session = request.app.state.Session
    with Session() as db:
        get_job(db, job_id)
    start = after or 0
    if last_event_id:
        if not is_digits(last_event_id) or int(last_event_id) > MAX_ID:
            raise invalid("Last-Event-ID", "an event id from this stream")
        start = int(last_event_id)
    keepalive = request.app.state.settings.sse_keepalive_seconds

    def poll(last: int):
        with Session() as db:
            status = db.scalar(select(Job.status).where(Job.id == job_id))  # read before the events
            rows = list(db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > last)
                                   .order_by(JobEvent.id).limit(500)))
        return status, rows

    async def stream():
        last, wrote = start, time.monotonic()
        yield "retry: 1000\n\n"
        while True:
            # the keep-alive goes out on time even while the poll waits for a busy thread pool
            polled = asyncio.ensure_future(run_in_threadpool(poll, last))
            while not (await asyncio.wait({polled}, timeout=max(0.0, wrote + keepalive - time.monotonic())))[0]:
                yield ": keep-alive\n\n"
                wrote = time.monotonic()
            status, rows = polled.result()
            for ev in rows:
                last = ev.id
                yield _sse(ev)
            if rows:
                wrote = time.monotonic()
            if status in FINAL and len(rows) < 500:
                return
            if not rows:
                if time.monotonic() - wrote >= keepalive:
                    yield ": keep-alive\n\n"
                    wrote = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.25)

    release = request.app.state.stream_slots.take(key.client, request.app.state.settings)
    return _Stream(stream(), release, media_type="text/event-stream",
                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
