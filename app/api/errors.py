"""Every error leaves as RFC 9457 problem+json: the handlers that turn ``Problem`` (app/core/errors.py),
``ConfigError``, request validation, HTTP errors and unhandled exceptions into one shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from app.core.errors import Problem, problem_body
from ml3core import ConfigError

log = logging.getLogger("ml3.api")
PROBLEM = "application/problem+json"


def problem_response(status: int, code: str, detail: str, headers=None, **extra) -> JSONResponse:
    return JSONResponse(problem_body(status, code, detail, **extra), status_code=status, media_type=PROBLEM,
                        headers=headers)


def _loc(loc) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def on_problem(request: Request, e: Problem):
        return JSONResponse(e.body(), status_code=e.status, media_type=PROBLEM, headers=e.headers)

    @app.exception_handler(ConfigError)
    async def on_config_error(request: Request, e: ConfigError):
        return problem_response(422, "invalid_spec", str(e), errors=e.errors)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, e: RequestValidationError):
        errors = [{"loc": _loc(err["loc"]), "msg": err["msg"]} for err in e.errors()]
        detail = "; ".join(f"{err['loc']}: {err['msg']}" for err in errors[:5])
        return problem_response(422, "invalid_request", detail, errors=errors)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, e: HTTPException):
        if e.status_code == 400 and isinstance(e.__cause__, (ValueError, RecursionError)):
            # FastAPI's 400 for a body its JSON parser gave up on (nested too deep): malformed JSON is a
            # 422 everywhere, as its own json_invalid and the evaluate routes answer
            msg = f"not a JSON document: {type(e.__cause__).__name__}"
            return problem_response(422, "invalid_request", f"body: {msg}", errors=[{"loc": "body", "msg": msg}])
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return problem_response(e.status_code, code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def on_error(request: Request, e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal_error", f"{type(e).__name__}: the server failed this request")
