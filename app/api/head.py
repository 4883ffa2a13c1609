"""HEAD on downloads: the GET's status and headers (Content-Length of the body it would send), no body."""

from __future__ import annotations

from fastapi import Response


def head_of(response: Response) -> Response:
    return Response(status_code=response.status_code, headers=dict(response.headers))
