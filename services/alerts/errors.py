"""What can go wrong in the alerts service's API, by name.

`AlertsError` is the service's base, a `LinePulseError` (linepulse/errors.py): each
subclass carries its HTTP status and builds its one-sentence message from what it names,
saying what to do next; the one handler of every LinePulse API (linepulse/http/api.py)
answers it with `{"detail": "..."}` and that status, as the KPI API answers its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from linepulse.errors import LinePulseError


class AlertsError(LinePulseError):
    """Base of the alerts service's errors (HTTP 500 unless a subclass says)."""


class UnknownLine(AlertsError):
    """A line the plant config does not have (HTTP 404)."""

    status_code: ClassVar[int] = 404

    def __init__(self, line: str, known: Iterable[str]) -> None:
        super().__init__(f"unknown line {line!r}; the plant's lines: {', '.join(known)}")


class UnknownMachine(AlertsError):
    """A machine the plant config does not have, or not on the line asked for (HTTP 404)."""

    status_code: ClassVar[int] = 404

    @classmethod
    def in_plant(cls, machine: str, known: Iterable[str]) -> UnknownMachine:
        """The plant has no machine `machine`."""
        return cls(f"unknown machine {machine!r}; the plant's machines: {', '.join(known)}")

    @classmethod
    def on_line(cls, machine: str, its_line: str, line: str) -> UnknownMachine:
        """`machine` exists, on `its_line`, not on the `line` asked for."""
        return cls(f"machine {machine!r} is on line {its_line!r}, not {line!r}")


class UnknownAlert(AlertsError):
    """No alert has this fingerprint (HTTP 404)."""

    status_code: ClassVar[int] = 404

    def __init__(self, fingerprint: str) -> None:
        super().__init__(f"no alert with fingerprint {fingerprint!r}; GET /v1/alerts lists them")


class AlertConflict(AlertsError):
    """The alert's state forbids the request, e.g. acking a pending or resolved alert
    (HTTP 409); the engine's message says which state."""

    status_code: ClassVar[int] = 409


class UnknownSilence(AlertsError):
    """No silence has this id (HTTP 404)."""

    status_code: ClassVar[int] = 404

    def __init__(self, silence_id: str) -> None:
        super().__init__(f"no silence {silence_id!r}; GET /v1/silences lists them")


class InvalidSilence(AlertsError):
    """A silence that cannot be kept: its times are out of order or past, or a matcher
    names a line or machine the plant does not have, so it would match nothing (HTTP 422)."""

    status_code: ClassVar[int] = 422


class InvalidNote(AlertsError):
    """A shift note that names no shift of its line: a shift it does not have that day,
    half a shift's name, or a line without shifts lately (HTTP 422)."""

    status_code: ClassVar[int] = 422
