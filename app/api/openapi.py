"""The OpenAPI document as the API really answers: every error leaves as RFC 9457
problem+json (app/api/errors.py), so each operation documents the errors it can return with the Problem
schema instead of FastAPI's default HTTPValidationError, which the API never sends; and each operation's
security names the one API-key scope it needs (optional where this server lets it in without).

Which errors: 401 where the operation takes a key, 403 where its scope is above read, 404 where its path
names a resource, 422 where it has parameters or a body, and those a route declares with ``problems(...)``
(409, 413, 429, ...). Two refusals come before any route and are said once, in the API's description:
a body over ML3_MAX_BODY_BYTES (413) and a NUL character in the URL (422)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html
from fastapi.openapi.utils import get_openapi

from app.services.security import SCOPES

PROBLEM_TYPE = "application/problem+json"
DOCS_STATIC = "/static-offline-docs"  # where fastapi-offline (FastAPIOffline) mounts Swagger UI and ReDoc
PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "stable, e.g. max_seeds_exceeded"},
        "errors": {"type": "array", "items": {"type": "object"}, "description": "the offending fields"},
        "limit": {"type": "string", "description": "the setting of a limit that was hit"},
        "allowed": {"type": "number", "description": "the value of that setting"},
    },
}
ERRORS = {
    "400": "the request cannot be read",
    "401": "no API key, or an unknown or revoked one",
    "403": "the API key lacks the scope, or the resource is another key's",
    "404": "no such resource",
    "409": "the resource is in another state",
    "413": "over a size limit (body, array, batch)",
    "415": "a file format this server does not read",
    "422": "invalid input, or over a job-size limit",
    "429": "over a rate or quota limit (see Retry-After)",
    "501": "this server lacks what the request needs (see the detail)",
    "503": "a dependency (database, broker, runner) cannot be reached",
}
EVERY_REQUEST = ("Every request: a body over ML3_MAX_BODY_BYTES is refused with 413 and a NUL character (%00) in "
                 "the path or query with 422, before any route; every error is RFC 9457 problem+json.")


def problems(*statuses: int) -> dict:
    """``responses=`` of a route: the errors it returns beyond those every operation of its kind can
    (401/403 by scope, 404 by path, 422 by parameters: added by ``install``)."""
    return {status: {"description": ERRORS[str(status)]} for status in statuses}


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas["Problem"] = PROBLEM
            schema["info"]["description"] = f"{schema['info'].get('description', '')}\n\n{EVERY_REQUEST}".strip()
            ref = {PROBLEM_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for operations in schema["paths"].values():
                for method, op in operations.items():
                    responses = op.setdefault("responses", {})
                    responses.pop("422", None)  # FastAPI's HTTPValidationError: added back below where it can happen
                    statuses = {s for s in responses if s[0] in "45"} | _implied(op)
                    for status in statuses:
                        responses[status] = {"description": ERRORS[status], "content": ref}
                    for answer in responses.values():  # files (zip, PNG, TorchScript, ONNX): bytes
                        for media, content in answer.get("content", {}).items():
                            if content.get("schema") is None and media not in ("application/json", PROBLEM_TYPE):
                                content["schema"] = {"type": "string", "format": "binary"}
                    if method == "head":  # headers only
                        for status in responses:
                            responses[status].pop("content", None)
                    if "security" in op:
                        op["security"] = _security(op["security"], app.state)
                        scope = op["security"][-1]["HTTPBearer"][0]
                        op["description"] = f"{op.get('description', '')}\n\nAPI key scope: {scope}.".strip()
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        """ReDoc from fastapi-offline's copy; its attribution logo would come from a CDN, so the
        page forbids images from other hosts (offline, the browser never even asks)."""
        page = get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} - ReDoc", with_google_fonts=False,
                              redoc_js_url=f"{DOCS_STATIC}/redoc.standalone.js",
                              redoc_favicon_url=f"{DOCS_STATIC}/favicon.png")
        page.headers["Content-Security-Policy"] = "img-src 'self' data:"
        return page


def _implied(op: dict) -> set[str]:
    """The errors an operation can return by its kind: a key (401; 403 above read), a resource in the path
    (404), parameters or a body to get wrong (422)."""
    out = set()
    scopes = [s for r in op.get("security", []) for s in r.get("HTTPBearer", [])]
    if scopes:
        out.add("401")
        if max(scopes, key=SCOPES.index) != "read":
            out.add("403")
    params = op.get("parameters", [])
    if any(p["in"] == "path" for p in params):
        out.add("404")
    if params or "requestBody" in op:
        out.add("422")
    return out


def _security(requirements: list[dict], state) -> list[dict]:
    """FastAPI lists every scope a route's dependencies ask for; scopes nest, so the strongest says it all."""
    scopes = [s for r in requirements for s in r.get("HTTPBearer", [])]
    scope = max(scopes, key=SCOPES.index, default="read")
    optional = not state.auth_enabled or (scope == "read" and not state.settings.auth_reads)
    return [{}, {"HTTPBearer": [scope]}] if optional else [{"HTTPBearer": [scope]}]
