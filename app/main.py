"""The FastAPI application: ``create_app(settings)``. Migrations run and the job runner starts in
the lifespan; every error leaves as RFC 9457 problem+json (app/api/errors.py)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from app import dashboard
from app.api import openapi
from app.api.errors import install_error_handlers, problem_response
from app.api.routes import datasets as dataset_routes
from app.api.routes import evaluate as evaluate_routes
from app.api.routes import health, jobs, losses, spec_schema
from app.core.config import Settings, get_settings
from app.core.errors import invalid
from app.db.session import get_engine, get_sessionmaker, upgrade
from app.jobs.runner import make_runner
from app.services import datasets, limits, security
from app.services.evaluate import LossCache
from app.services.registry import FastResolver


class Guard:
    """Pure ASGI middleware: rejects oversized bodies (declared or chunked) before any route reads
    them, and counts requests for /metrics."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.state.settings.max_body_bytes
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        too_large = length is not None and length.isdigit() and int(length) > limit
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):  # chunked: count it first
            messages = await limits.read_body(receive, limit)
            if messages is None:
                too_large = True
            else:
                receive = limits.replay(messages, receive)
        if too_large:
            e = limits.exceeded("max_body_bytes", 413, "the request body is too large", limit)
            return await problem_response(e.status, e.code, e.detail, **e.extra)(scope, receive, send)
        if "\x00" in scope["path"] or b"%00" in scope["query_string"] or b"\x00" in scope["query_string"]:
            # no name, id or parameter holds one, and PostgreSQL refuses it in text: a 422 here, not a 500 there
            e = invalid("url", "a NUL character (%00) is not allowed in a path or query")
            return await problem_response(e.status, e.code, e.detail, **e.extra)(scope, receive, send)
        status = [500]

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            stats = self.state.stats
            stats["requests"][(scope["method"], route, status[0])] += 1
            d = stats["durations"][(scope["method"], route)]
            d[0] += 1
            d[1] += time.perf_counter() - start


def create_app(settings: Settings | None = None, runner=None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        upgrade(settings.db_url)
        security.announce(settings, app.state.Session)
        app.state.runner.start()
        yield
        app.state.runner.stop()

    # /docs and /redoc (app/api/openapi.py) load Swagger UI and ReDoc from the fastapi-offline package:
    # no CDN, so they work on a machine without internet (and Swagger UI's online validator stays off)
    app = FastAPIOffline(title="ml3", version="1", lifespan=lifespan, redoc_url=None,
                         swagger_ui_parameters={"validatorUrl": None},
                         description="Meta-learn loss functions (ML3) and serve them: jobs, registry, evaluate.")
    torch.set_num_threads(settings.api_threads)
    app.state.settings = settings
    datasets.use_database(settings.db_url)  # the dataset family reads uploads from this database
    app.state.Session = get_sessionmaker(settings.db_url)
    app.state.engine = get_engine(settings.db_url)
    app.state.resolve = FastResolver(app.state.engine, settings.resolve_cache_seconds)
    app.state.runner = runner if runner is not None else make_runner(settings)
    app.state.cache = LossCache(settings.loss_cache_size, settings.loss_recheck_seconds)
    app.state.auth_enabled = security.auth_enabled(settings)
    app.state.eval_limiter = limits.RateLimiter(settings.eval_rate, settings.eval_burst)
    app.state.stream_slots = limits.Slots("max_streams", "event streams open", retry_after=5)
    app.state.streams = app.state.stream_slots.counts  # open event streams per caller
    # submits and uploads in progress per caller: a burst of one key's writes cannot hold every database
    # connection and thread (the others are a 429 at once, before any database work)
    app.state.write_slots = limits.Slots("max_key_writes", "write requests in progress", retry_after=1)
    app.state.big_evaluates = asyncio.Semaphore(settings.max_big_evaluates)  # evaluate bodies over 256 KiB
    app.state.stats = {"requests": Counter(), "durations": defaultdict(lambda: [0, 0.0]),
                       "evaluate_values": 0}
    install_error_handlers(app)
    openapi.install(app)
    app.add_middleware(Guard, state=app.state)
    app.include_router(health.router)
    health.add_echo_route(app)  # bench/evaluate.py's bare route, served like the next one
    evaluate_routes.add_plain_route(app)  # the hot path, matched next, without FastAPI's per-request work
    for module in (evaluate_routes, jobs, losses, spec_schema):
        app.include_router(module.router)
    app.include_router(dataset_routes.router)
    app.include_router(dashboard.router)  # the web pages at /
    return app
