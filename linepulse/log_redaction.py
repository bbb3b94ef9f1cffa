"""Blanking secrets that third-party clients put into their own DEBUG log lines.

aiokafka logs every request it sends (the SASL PLAIN one carries the password in clear)
and asyncua logs ActivateSession with the user's password; neither offers a switch. A
filter on the logger that emits them replaces the offending argument before formatting,
so the line still says that the request went out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable


class _RedactArguments(logging.Filter):
    def __init__(self, label: str, matches: Callable[[object], bool]) -> None:
        super().__init__()
        self.label = label
        self.matches = matches

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(self.matches(a) for a in args):
            record.args = tuple(f"{self.label}(<redacted>)" if self.matches(a) else a for a in args)
        return True


def redact_log_arguments(logger: str, label: str, matches: Callable[[object], bool]) -> None:
    """Log `label(<redacted>)` in place of every argument `matches` accepts, on `logger`;
    installed once per logger and label, however often it is called."""
    target = logging.getLogger(logger)
    if not any(isinstance(f, _RedactArguments) and f.label == label for f in target.filters):
        target.addFilter(_RedactArguments(label, matches))
