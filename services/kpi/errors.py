"""What can go wrong in the KPI service, by name.

`KpiError` is the service's base, a `LinePulseError` (linepulse/errors.py): each subclass
carries its HTTP status, and the one handler of every LinePulse API
(linepulse/http/api.py) answers it with `{"detail": "..."}` and that status. Messages say
what to do next ("GET /v1/machines lists them"), because the person who reads them is
usually a dashboard author with a query string in front of them.
"""

from __future__ import annotations

from typing import ClassVar

from linepulse.errors import LinePulseError


class KpiError(LinePulseError):
    """Base of the KPI service's errors (HTTP 500 unless a subclass says)."""


class NotFound(KpiError):
    """A line, machine or stop the plant config or the store does not have (HTTP 404)."""

    status_code: ClassVar[int] = 404


class BadRequest(KpiError):
    """A request parameter that cannot be used: bad window, time or range (HTTP 422)."""

    status_code: ClassVar[int] = 422


class Conflict(KpiError):
    """A request that the current state forbids, e.g. a stop too old to restate (HTTP 409)."""

    status_code: ClassVar[int] = 409


class Unavailable(KpiError):
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
