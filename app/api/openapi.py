"""The OpenAPI document as the API really answers: every error leaves as RFC 9457
problem+json (app/api/errors.py), so each operation documents its 4xx answers with the Problem schema
instead of FastAPI's default HTTPValidationError, which the API never sends; and each operation's
security names the one API-key scope it needs (optional where this server lets it in without)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html
from fastapi.openapi.utils import get_openapi

from app.services.security import SCOPES

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
    "422": "invalid input, or over a job-size limit",
    "429": "over a rate or quota limit (see Retry-After)",
}


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.pop("HTTPValidationError", None)
            schemas.pop("ValidationError", None)
            schemas["Problem"] = PROBLEM
            ref = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
            for operations in schema["paths"].values():
                for op in operations.values():
                    responses = op.setdefault("responses", {})
                    for status, text in ERRORS.items():
                        responses[status] = {"description": text, "content": ref}
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


def _security(requirements: list[dict], state) -> list[dict]:
    """FastAPI lists every scope a route's dependencies ask for; scopes nest, so the strongest says it all."""
    scopes = [s for r in requirements for s in r.get("HTTPBearer", [])]
    scope = max(scopes, key=SCOPES.index, default="read")
    optional = not state.auth_enabled or (scope == "read" and not state.settings.auth_reads)
    return [{}, {"HTTPBearer": [scope]}] if optional else [{"HTTPBearer": [scope]}]
