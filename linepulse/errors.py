"""What a LinePulse API says when a request cannot be served: one base error, one body.

Each service names what can go wrong in its own `errors.py` (services/kpi/errors.py,
services/alerts/errors.py), every error a subclass of `LinePulseError` carrying its HTTP
status and a one-sentence `detail` that says what to do next. One handler, installed by
`linepulse.http.api.create_api` in both APIs, turns any of them into `ErrorDetail` with
that status, so a route raises what went wrong and never builds a response for it, and a
client parses one error format whichever API and whichever check refused the request.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel


class LinePulseError(Exception):
    """Base of the services' errors: `detail` is the one sentence shown to the client,
    `status_code` the HTTP status it is answered with (500 unless a subclass says)."""

    status_code: ClassVar[int] = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ErrorDetail(BaseModel):
    """The body of every error answer of a LinePulse API, the guard's and the routes':
    what went wrong and what to do next (linepulse/http/api.py gives FastAPI's validation
    errors the same shape)."""

    detail: str
