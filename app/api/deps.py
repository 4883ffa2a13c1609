"""Shared dependencies of the routes (Annotated, as in the FastAPI full-stack template)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sqlalchemy.orm import Session

from app.core.errors import invalid
from app.db.models import MAX_ID
from app.services.ids import Digits, is_digits
from app.services.security import Principal, authorize


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.Session() as db:
        yield db


DB = Annotated[Session, Depends(get_db)]
# a row id in a path: ASCII digits ('+1', ' 1' and '1\n' are no id), too large is a 422, not a database error
Id = Annotated[int, Digits, Path(ge=1, le=MAX_ID)]
# the Idempotency-Key header of the routes that submit a job (app/services/jobs.py scopes it per API key)
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)]

# -- access: every /v1 router reads with ``dependencies=[READ]``; each write route names its scope.
# The scope also lands in each route's OpenAPI security requirement (see app/api/openapi.py). Async: no
# thread hop on the evaluate hot path; with keys on, the lookup is one indexed query, run in the event
# loop like evaluate's own resolving of the loss id.
bearer = HTTPBearer(auto_error=False, description="an API key: `ml3 keys create --scope read|submit|admin`")


Credentials = HTTPAuthorizationCredentials | None


def _token(credentials: Credentials) -> str | None:
    return credentials.credentials if credentials else None


async def read_key(request: Request,
                   credentials: Annotated[Credentials, Security(bearer, scopes=["read"])]) -> Principal:
    return authorize(request, "read", _token(credentials))


async def submit_key(request: Request,
                     credentials: Annotated[Credentials, Security(bearer, scopes=["submit"])]) -> Principal:
    return authorize(request, "submit", _token(credentials))


async def admin_key(request: Request,
                    credentials: Annotated[Credentials, Security(bearer, scopes=["admin"])]) -> Principal:
    return authorize(request, "admin", _token(credentials))


def read_key_inline(request: Request) -> Principal:
    """``read_key`` called by hand, for the routes that skip dependency solving (evaluate): the
    same bearer parsing as ``HTTPBearer(auto_error=False)``, the same checks and errors."""
    if not request.app.state.auth_enabled:  # no key is looked at: skip reading the header
        return authorize(request, "read", None)
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    return authorize(request, "read", token if scheme.lower() == "bearer" and token else None)


READ, ADMIN = Depends(read_key), Depends(admin_key)
ReadKey = Annotated[Principal, Depends(read_key)]
SubmitKey = Annotated[Principal, Depends(submit_key)]
AdminKey = Annotated[Principal, Depends(admin_key)]


class Page:
    """Cursor pagination: ``?limit=&cursor=``; the cursor is opaque (an encoded row key)."""

    def __init__(self, request: Request, limit: Annotated[int, Digits, Query(ge=1)] = 20, cursor: str | None = None):
        self.limit = min(limit, request.app.state.settings.page_limit)
        self.after = None
        if cursor:
            try:
                text = base64.urlsafe_b64decode(cursor.encode()).decode()
            except ValueError:  # not base64, or not UTF-8
                text = None
            if not is_digits(text) or int(text) > MAX_ID:
                raise invalid("cursor", "not a cursor from a previous page")
            self.after = int(text)

    def result(self, rows: list, key, render) -> dict:
        """rows were fetched with limit + 1: the extra one says whether a next page exists."""
        more = len(rows) > self.limit
        rows = rows[: self.limit]
        nxt = base64.urlsafe_b64encode(str(key(rows[-1])).encode()).decode() if more else None
        return {"items": [render(r) for r in rows], "next_cursor": nxt}


PageDep = Annotated[Page, Depends(Page)]


def reject_unknown_query(request: Request, known: set[str] | frozenset[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise invalid(unknown[0], f"unknown query parameter; known: {sorted(known)}")
