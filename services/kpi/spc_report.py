"""A study of recorded telemetry for `linepulse spc`: the charted signals' samples taken
out of event frames, and the studies (linepulse/spc_chart.py) as text a quality
engineer reads.

A sample is a numeric value of a charted machine and signal whose quality is not `bad`
(linepulse/spc_stream.py `charted_samples`, as the live charts take them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from linepulse.spc import SpcChart
from linepulse.spc_stream import charted_samples

_CHART_NAMES = {"xbar_r": "X-bar and R", "xbar_s": "X-bar and S", "imr": "individuals and MR"}
_SPREAD = {"xbar_r": "R", "xbar_s": "S", "imr": "MR"}
SHOWN_VIOLATIONS = 10


def spc_samples(
    charts: Sequence[SpcChart], frames: Iterable[pl.DataFrame]
) -> dict[str, list[tuple[int, float]]]:
    """(epoch ms, value) of each chart's signal, by chart name, from `EVENT_SCHEMA`
    frames."""
    out: dict[str, list[tuple[int, float]]] = {c.name: [] for c in charts}
    for frame in frames:
        for ts, machine, signal, value in charted_samples(frame, charts).iter_rows():
            out[f"{machine}/{signal}"].append((ts, value))
    return out


def _local(utc: str, zone: ZoneInfo) -> str:
    return datetime.fromisoformat(utc).astimezone(zone).strftime("%Y-%m-%d %H:%M")


def _cap(row: Mapping[str, Any]) -> str:
    def fig(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    return (
        f"Cp {fig(row['cp'])}  Cpk {fig(row['cpk'])}  Pp {fig(row['pp'])}  "
        f"Ppk {fig(row['ppk'])}  (n {row['n']})"
    )


def _every(seconds: int | None) -> str:
    """` (the first of every 1 h)` for time-based subgroups; nothing for consecutive."""
    if seconds is None:
        return ""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds % size == 0:
            return f" (the first of every {seconds // size} {unit})"
    return f" (the first of every {seconds} s)"


def spc_text(studies: Sequence[Mapping[str, Any]], zone: ZoneInfo) -> str:
    """Each chart: its limits, the rules broken (the first `SHOWN_VIOLATIONS`, times in
    the plant's zone) and its capability, overall and per shift."""
    lines: list[str] = []
    for result in studies:
        limits = result["limits"]
        kind = result["chart"]
        lines += [
            f"{result['machine']}/{result['signal']}: {_CHART_NAMES[kind]}, subgroups of "
            f"{result['subgroup_size']}{_every(result.get('subgroup_every_s'))}, "
            f"{result['subgroups']} subgroups",
            f"  limits ({limits['source']}): centre {limits['center']:.6g}, "
            f"{limits['lcl']:.6g} to {limits['ucl']:.6g}; {_SPREAD[kind]} centre "
            f"{limits['spread_center']:.4g}, up to {limits['spread_ucl']:.4g}; "
            f"sigma {limits['sigma']:.4g}",
        ]
        broken = result["violations"]
        if not broken:
            lines.append("  rules: none broken")
        else:
            lines.append(f"  rules broken: {len(broken)}")
            lines += [
                f"    {_local(v['end'], zone)}  {v['rule']}" for v in broken[:SHOWN_VIOLATIONS]
            ]
            if len(broken) > SHOWN_VIOLATIONS:
                lines.append(f"    and {len(broken) - SHOWN_VIOLATIONS} more (--format json)")
        if "capability" in result:
            lines.append(f"  capability: {_cap(result['capability'])}")
            lines += [
                f"    {row['date']} {row['shift']}: {_cap(row)}"
                for row in result.get("capability_by_shift", [])
            ]
        lines.append("")
    return "\n".join(lines).rstrip("\n")
