"""What can go wrong in the KPI service, by name, and how the API reports it.

One base exception, `LinePulseError`; each subclass carries its HTTP status, and one
handler (`handle_error`) turns any of them into `{"detail": "..."}` with that status.
Messages say what to do next ("GET /v1/machines lists them"), because the person who
reads them is usually a dashboard author with a query string in front of them.

FastAPI's own validation errors (a query parameter outside its enum, a missing `from`)
are reported in the same `{"detail": "..."}` shape by the shared handler of every
LinePulse API (linepulse/http_api.py), so a client parses one error format whatever
caught the mistake.
"""

from __future__ import annotations

from typing import ClassVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class LinePulseError(Exception):
    """Base of the service's errors; `detail` is the message shown to the client."""

    status_code: ClassVar[int] = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(LinePulseError):
    """A line or machine the plant config does not have (HTTP 404)."""

    status_code: ClassVar[int] = 404


class BadRequest(LinePulseError):
    """A request parameter that cannot be used: bad window, time or range (HTTP 422)."""

    status_code: ClassVar[int] = 422


class Conflict(LinePulseError):
    """A request that the current state forbids, e.g. a stop too old to restate (HTTP 409)."""

    status_code: ClassVar[int] = 409


class Unavailable(LinePulseError):
    """A dependency the request needs is missing or down, e.g. Kafka (HTTP 503)."""

    status_code: ClassVar[int] = 503


class InvalidRecord(BadRequest):
    """A KPI record or machine status handed to the store does not have the contract's
    shape (schemas/kpi-record.schema.json); nothing of its batch was written.

    `index` is the position in the batch of the record the message names (others may be
    bad too), or None where no single record is to blame.
    """

    def __init__(self, detail: str, index: int | None = None) -> None:
        super().__init__(detail)
        self.index = index


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """Map a `LinePulseError` to its status with `{"detail": message}`."""
    if not isinstance(exc, LinePulseError):  # pragma: no cover - registered for it only
        raise exc
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


def install_error_handlers(app: FastAPI) -> None:
    """Map the service's errors to their status codes; FastAPI's validation errors are
    already reported in the same shape by the app (linepulse.http_api.create_api)."""
    app.add_exception_handler(LinePulseError, handle_error)
