"""Errors every layer can raise; the API turns them into RFC 9457 problem+json responses."""

from __future__ import annotations

from http import HTTPStatus


class Problem(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None, **extra):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra

    def body(self) -> dict:
        return problem_body(self.status, self.code, self.detail, **self.extra)


def problem_body(status: int, code: str, detail: str, **extra) -> dict:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"type": f"urn:ml3:problem:{code}", "title": title, "status": status, "detail": detail,
            "code": code, **extra}


def not_found(what: str) -> Problem:
    return Problem(404, "not_found", f"{what} not found")


def invalid(loc: str, msg: str, code: str = "invalid") -> Problem:
    """A 422 naming the offending field."""
    return Problem(422, code, f"{loc}: {msg}", errors=[{"loc": loc, "msg": msg}])
