"""Line-level fields no sum gives: the constraint, the bottleneck, output against target.

A line's machines run in sequence (config order). Its summed record (docs/kpi.md) says how
much was lost; these fields say where: the constraint machine's OEE (the line can go no
faster than it), the machine whose own stops (down, setup, small stops) cost the most in
the window while the others waited on it, and, for a shift, the output machine's good
parts against the line's target with a projection to the shift's end at the current
rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from linepulse.config import Line
from linepulse.production import LineTarget


class MachineWindow(NamedTuple):
    """What the line fields read from one machine's record of the window (a tuple: one
    is made per machine record at every step)."""

    oee: float | None
    good_count: int
    own_stop_s: float  # down + setup + small stops: time the machine stopped itself
    planned_s: float


@dataclass(frozen=True)
class LineShape:
    """What the line fields read from a line's config, resolved once per core: `Line`'s
    `constraint_machine` and `output_machine` scan its machines on every call, and every
    step makes a line record per open window."""

    id: str
    machines: tuple[str, ...]  # config order: a bottleneck tie goes to the earlier one
    constraint: str
    output: str
    output_ideal_cycle_time_s: float | None
    target: LineTarget | None

    @classmethod
    def of(cls, line: Line) -> LineShape:
        output = line.output_machine
        return cls(
            id=line.id,
            machines=tuple(m.id for m in line.machines),
            constraint=line.constraint_machine.id,
            output=output.id,
            output_ideal_cycle_time_s=output.ideal_cycle_time_s,
            target=line.target,
        )


LINE_FIELDS = (
    "constraint",
    "oee_constraint",
    "bottleneck",
    "bottleneck_s",
    "output_count",
    "target_count",
    "projected_count",
)


def line_fields(
    line: LineShape,
    machines: dict[str, MachineWindow],
    *,
    shift: str | None,
    final: bool,
    full_planned_s: float,
    remaining_s: float,
) -> dict[str, Any]:
    """The line fields of one line record.

    `full_planned_s` is the window's calendar planned time from start to end (for a shift
    target from the ideal rate); `remaining_s` the calendar planned time still ahead of
    the latest event (0 once final).
    """
    constraint = line.constraint
    out: dict[str, Any] = dict.fromkeys(LINE_FIELDS)
    out["constraint"] = constraint
    if constraint in machines:
        out["oee_constraint"] = machines[constraint].oee
    best: tuple[float, str] | None = None
    for machine in line.machines:  # config order: ties go to the earlier machine
        seen = machines.get(machine)
        if seen is not None and seen.own_stop_s > 0 and (best is None or seen.own_stop_s > best[0]):
            best = (seen.own_stop_s, machine)
    if best is not None:
        out["bottleneck_s"], out["bottleneck"] = best
    produced = machines.get(line.output)
    if produced is not None:
        out["output_count"] = produced.good_count
    if shift is None:
        return out
    if line.target is not None:
        out["target_count"] = line.target.parts_for(
            shift, full_planned_s, line.output_ideal_cycle_time_s
        )
    if produced is not None:
        if final:
            out["projected_count"] = float(produced.good_count)
        elif produced.planned_s > 0:
            rate = produced.good_count / produced.planned_s
            out["projected_count"] = produced.good_count + rate * remaining_s
    return out
