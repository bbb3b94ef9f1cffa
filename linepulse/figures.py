"""Figures as people read them in reports and mails: a ratio as a percentage, a count
with thousands separators, "–" where there is none (as the live board shows them)."""

from __future__ import annotations


def percent(ratio: float | None) -> str:
    """0.7479 -> `74.8 %`; None -> `–`."""
    return "–" if ratio is None else f"{ratio * 100:.1f} %"


def count(value: float | None) -> str:
    """18848 -> `18,848`; None -> `–`."""
    return "–" if value is None else f"{value:,.0f}"
