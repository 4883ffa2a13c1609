"""Liveness, readiness, Prometheus metrics, and a bare echo route the benchmark compares against
(``add_echo_route``: a plain Starlette route, like the evaluate route it is compared with)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from sqlalchemy import func, select, text
from starlette.routing import Route

from app.api.deps import READ
from app.api.openapi import problems
from app.api.schemas import HealthOut, ReadyOut
from app.core.errors import Problem, invalid, not_found
from app.db.models import STATUSES, Job
from app.services.security import authorize

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up", response_model=HealthOut)
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="The database (and the broker or runner) can be reached", response_model=ReadyOut,
            responses=problems(503))
def readyz(request: Request) -> dict:
    state = request.app.state
    try:
        with state.Session() as db:
            db.execute(text("SELECT 1"))
    except Exception as e:
        raise Problem(503, "database_unavailable", f"database unreachable: {type(e).__name__}: {e}") from None
    problem = state.runner.problem()
    if problem:
        raise Problem(503, "runner_unavailable", problem)
    return {"status": "ready", "runner": state.settings.runner}


# a read like any other: open unless ML3_AUTH_READS=true (with keys on), then a key with scope read
@router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[READ],
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}, "example": (
                '# TYPE ml3_jobs gauge\nml3_jobs{status="running"} 1\n')}}}})
def metrics(request: Request) -> Response:
    state = request.app.state
    lines = ["# TYPE ml3_http_requests_total counter"]
    for (method, route, status), n in sorted(state.stats["requests"].items()):
        lines.append(f'ml3_http_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}')
    lines.append("# TYPE ml3_http_request_duration_seconds summary")
    for (method, route), (count, total) in sorted(state.stats["durations"].items()):
        labels = f'method="{method}",route="{route}"'
        lines.append(f"ml3_http_request_duration_seconds_count{{{labels}}} {count}")
        lines.append(f"ml3_http_request_duration_seconds_sum{{{labels}}} {total:.6f}")
    lines.append("# TYPE ml3_jobs gauge")
    with state.Session() as db:
        counts = dict(db.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    for status in STATUSES:
        lines.append(f'ml3_jobs{{status="{status}"}} {counts.get(status, 0)}')
    cache = state.cache
    lines += ["# TYPE ml3_loss_cache_hits_total counter", f"ml3_loss_cache_hits_total {cache.hits}",
              "# TYPE ml3_loss_cache_misses_total counter", f"ml3_loss_cache_misses_total {cache.misses}",
              "# TYPE ml3_evaluate_values_total counter",
              f"ml3_evaluate_values_total {state.stats['evaluate_values']}",
              "# TYPE ml3_runner_up gauge", f"ml3_runner_up {0 if state.runner.problem() else 1}"]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def _bench_on(request: Request) -> None:
    """The echo routes exist for bench/ only: off (404) unless ML3_BENCH_ROUTES=true; then a read like
    any other (keyed when keys are on). Called inline, not as a dependency: the route measures the bare
    framework."""
    state = request.app.state
    if not state.settings.bench_routes:
        raise not_found("route")
    if state.auth_enabled:
        header = request.headers.get("authorization", "")
        authorize(request, "read", header[7:] if header[:7].lower() == "bearer " else None)


async def echo(request: Request) -> Response:
    """Parses and returns its query (GET) or JSON body (POST): the cost of HTTP and the framework alone
    (see bench/)."""
    _bench_on(request)
    if request.method == "GET":
        return Response(json.dumps(dict(request.query_params)), media_type="application/json")
    try:
        return Response(json.dumps(json.loads(await request.body())), media_type="application/json")
    except (ValueError, RecursionError) as e:  # malformed, or nested deeper than the parser goes
        raise invalid("body", f"not a JSON document: {type(e).__name__}") from None


def add_echo_route(app) -> None:
    """Serve the echo the way evaluate is served (``add_plain_route`` in routes/evaluate.py): a plain
    Starlette route at the app's top level, added just before it, so bench/evaluate.py's ratio compares
    the handlers, not two ways of routing."""
    route = Route("/v1/_echo", echo, methods=["GET", "POST"], name="echo", include_in_schema=False)
    route.methods.discard("HEAD")
    app.router.routes.append(route)
