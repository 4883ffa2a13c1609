"""Shared dependencies of the routes (Annotated, as in the FastAPI full-stack template)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from ..core.config import Settings
from ..errors import invalid


def get_db(request: Request) -> Iterator[Session]:
    with request.app.state.Session() as db:
        yield db


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


DB = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


class Page:
    """Cursor pagination: ``?limit=&cursor=``; the cursor is opaque (an encoded row key)."""

    def __init__(self, request: Request, limit: Annotated[int, Query(ge=1)] = 20, cursor: str | None = None):
        self.limit = min(limit, request.app.state.settings.page_limit)
        self.after = None
        if cursor:
            try:
                self.after = int(base64.urlsafe_b64decode(cursor.encode()).decode())
            except ValueError:
                raise invalid("cursor", "not a cursor from a previous page") from None

    def result(self, rows: list, key, render) -> dict:
        """rows were fetched with limit + 1: the extra one says whether a next page exists."""
        more = len(rows) > self.limit
        rows = rows[: self.limit]
        nxt = base64.urlsafe_b64encode(str(key(rows[-1])).encode()).decode() if more else None
        return {"items": [render(r) for r in rows], "next_cursor": nxt}


PageDep = Annotated[Page, Depends(Page)]


def reject_unknown_query(request: Request, known: set[str]) -> None:
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise invalid(unknown[0], f"unknown query parameter; known: {sorted(known)}")
