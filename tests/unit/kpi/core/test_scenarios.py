"""Beyond OEE on simulated lines: a shift of the seeded equipment simulator, run through
the KPI core as the streaming worker runs it, names the machine whose stops starve the
rest as the line's bottleneck, and projects a slow shift's miss of its target early."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from linepulse.config import PlantConfig, parse_config
from linepulse.events import empty_events
from services.ingest.simulator.generate import events_frame, simulate_events
from services.ingest.simulator.model import Behaviour, Event
from services.ingest.simulator.scenario import Scenario, Speed, Stops
from services.kpi.core.engine import Core, initial_state, step

MIN = 60_000
HOUR = 60 * MIN
# Monday 2026-11-02, UTC: the early shift 06:00-14:00 with a break 10:00-10:30.
START = int(datetime(2026, 11, 2, 6, tzinfo=UTC).timestamp() * 1000)
END = START + 8 * HOUR
LINE = "line-1"
MACHINES = ("filler", "capper", "labeler", "packer")  # in line order; packer is the output
SIGNALS = ("state", "product", "total_count", "reject_count")
BATCH_MS = 10 * MIN  # the worker's batches, in event time, where open records matter
MARGIN = 0.05  # a projection this far under the target is a miss


def line_plant(*, target: float | None = None, alerts: dict[str, Any] | None = None) -> PlantConfig:
    line: dict[str, Any] = {
        "id": LINE,
        "machines": [{"id": m, "ideal_cycle_time_s": 1.0} for m in MACHINES],
    }
    if target is not None:
        line["target"] = {"efficiency": target}
    data: dict[str, Any] = {
        "site": "sim",
        "timezone": "UTC",
        "shifts": [
            {
                "name": "early",
                "start": "06:00",
                "end": "14:00",
                "breaks": [{"start": "10:00", "end": "10:30"}],
                **({"lead": "ann"} if alerts else {}),
            }
        ],
        "lines": [line],
    }
    if alerts is not None:
        data["alerts"] = alerts
    return parse_config(data)


def shift_events(config: PlantConfig, scenario: Scenario, seed: int) -> list[Event]:
    """The shift's ticks, and one at its end (a planned stop) that closes its last second."""
    return simulate_events(
        config,
        seed=seed,
        start_ms=START,
        end_ms=END + 1000,
        scenario=scenario,
        behaviour=Behaviour(),
        signals=SIGNALS,
    )


@dataclass
class Run:
    """Final records by (machine, window, window_start); open line shift records by the
    event time they were emitted at."""

    finals: dict[tuple[str | None, str, str], dict[str, Any]] = field(default_factory=dict)
    open_shift: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


def run_core(config: PlantConfig, events: list[Event], *, open_records: bool = False) -> Run:
    """Feed the events in one batch, or in BATCH_MS batches of event time with their open
    records, then flush."""
    core = Core.from_config(config, ("shift", "1h"))
    state = initial_state(core)
    out = Run()
    size = BATCH_MS if open_records else END + 1000 - START
    batches = [[e for e in events if lo <= e.ts < lo + size] for lo in range(START, END + 1, size)]
    for i, batch in enumerate([*batches, []]):
        last = i == len(batches)
        frame = events_frame(batch) if batch else empty_events()
        state, output = step(core, state, frame, flush=last, open_records=open_records)
        now = max(e.ts for e in batch) if batch else END
        for record in output.records:
            key = (record["machine"], record["window"], record["window_start"])
            if record["final"]:
                out.finals[key] = record
            elif record["machine"] is None and record["window"] == "shift":
                out.open_shift.append((now, record))
    return out


# -- (a) one machine's stops starve the rest: it is the bottleneck --------------------------

BOTTLENECK = Scenario(
    "capper fails",
    coupling={LINE: 30.0},
    stops={LINE: Stops(math.inf), "capper": Stops(mean_run_s=600.0, mean_down_s=300.0)},
)


@pytest.fixture(scope="module")
def bottleneck_run() -> Run:
    config = line_plant()
    return run_core(config, shift_events(config, BOTTLENECK, seed=3))


def test_the_failing_machine_is_the_shifts_bottleneck(bottleneck_run: Run) -> None:
    finals = bottleneck_run.finals
    shift = finals[(None, "shift", "2026-11-02T06:00:00Z")]
    machines = {m: finals[(m, "shift", "2026-11-02T06:00:00Z")] for m in MACHINES}
    capper = machines["capper"]
    assert shift["bottleneck"] == "capper"
    own = capper["down_s"] + capper["setup_s"] + capper["small_stop_s"]
    assert shift["bottleneck_s"] == pytest.approx(own)
    assert capper["down_s"] > 0.1 * capper["planned_s"]
    assert capper["down_s"] == max(r["down_s"] for r in machines.values())
    # The others never stop on their own: they wait on the capper.
    for machine in ("filler", "labeler", "packer"):
        record = machines[machine]
        assert record["down_s"] == 0
        assert record["setup_s"] == 0
        assert record["idle_s"] > 0.5 * capper["down_s"], machine
        waited = "blocked" if machine == "filler" else "starved"
        assert set(record["downtime_by_reason"]) == {waited}, machine
    # The packer, two buffers downstream, waits less than the labeler next to the capper.
    assert machines["packer"]["idle_s"] < machines["labeler"]["idle_s"]
    assert shift["output_count"] == machines["packer"]["good_count"]


def test_the_failing_machine_is_the_bottleneck_of_most_hours(bottleneck_run: Run) -> None:
    hours = [
        r
        for (m, w, start), r in bottleneck_run.finals.items()
        if m is None and w == "1h" and start < "2026-11-02T14"
    ]
    assert len(hours) == 8
    named = [r["bottleneck"] for r in hours]
    assert named.count("capper") >= 6, named
    assert set(named) <= {"capper", None}


def test_uncoupled_the_others_never_wait() -> None:
    config = line_plant()
    alone = Scenario("capper fails, no buffers", stops=BOTTLENECK.stops)
    finals = run_core(config, shift_events(config, alone, seed=3)).finals
    for machine in ("filler", "labeler", "packer"):
        record = finals[(machine, "shift", "2026-11-02T06:00:00Z")]
        assert record["idle_s"] == record["down_s"] == 0
        assert record["run_s"] == record["planned_s"] == 7.5 * 3600
    assert finals[(None, "shift", "2026-11-02T06:00:00Z")]["bottleneck"] == "capper"


# -- (b) a slow shift is projected to miss its target early, a good one never ----------------

TARGET = 0.85
# A few short stops anywhere on the line: the speed alone decides the shift.
FEW_STOPS = {LINE: Stops(mean_run_s=7200.0, mean_down_s=120.0)}
SLOW = Scenario("slow", coupling={LINE: 30.0}, speed={LINE: Speed(0.65)}, stops=FEW_STOPS)
GOOD = Scenario("good", coupling={LINE: 30.0}, speed={LINE: Speed(1.0)}, stops=FEW_STOPS)


@functools.cache
def forecast_run(scenario: str, seed: int) -> Run:
    """A shift of SLOW or GOOD through the core, open records included (shared by tests)."""
    config = line_plant(target=TARGET)
    events = shift_events(config, SLOW if scenario == "slow" else GOOD, seed)
    return run_core(config, events, open_records=True)


def misses(record: dict[str, Any]) -> bool:
    return bool(record["projected_count"] < record["target_count"] * (1 - MARGIN))


@pytest.mark.parametrize("seed", [1, 2])
def test_a_slow_shift_is_projected_to_miss_its_target_early(seed: int) -> None:
    run = forecast_run("slow", seed)
    assert len(run.open_shift) >= 40  # a record at about every batch
    target = 22_950  # 0.85 x 7.5 planned hours / 1 s
    for _, record in run.open_shift:
        assert record["target_count"] == target
        assert record["output_count"] is not None
        assert record["projected_count"] is not None
    first_miss = next(at for at, record in run.open_shift if misses(record))
    assert first_miss <= START + 2 * HOUR  # within the first quarter of the shift
    assert all(misses(record) for at, record in run.open_shift if at >= first_miss)
    final = run.finals[(None, "shift", "2026-11-02T06:00:00Z")]
    assert final["output_count"] < 0.8 * target


@pytest.mark.parametrize("seed", [1, 2])
def test_a_good_shift_is_never_projected_to_miss(seed: int) -> None:
    run = forecast_run("good", seed)
    assert len(run.open_shift) >= 40
    assert not [(at, r["projected_count"]) for at, r in run.open_shift if misses(r)]
    final = run.finals[(None, "shift", "2026-11-02T06:00:00Z")]
    assert final["output_count"] >= final["target_count"]


# -- the forecast alert on these shifts -----------------------------------------------------

FORECAST_RULE: dict[str, Any] = {
    "name": "shift-target-miss",
    "forecast": "target_miss",
    "window": "shift",
    "margin": MARGIN,
    "for": "10m",
    "scope": {"lines": [LINE]},
}
ALERTS: dict[str, Any] = {
    "channels": [{"id": "console", "type": "console"}],
    "people": {"ann": {"name": "Ann", "channels": ["console"]}},
    "group_wait": 0,
    "rules": [FORECAST_RULE],
}


def forecast_alerts(run: Run, store: Path) -> tuple[list[int], list[int]]:
    """Drive the alert engine with the open line shift records in time order, as the
    alerts service reads them off the kpi topic: when each alert fired, when each page
    went out."""
    from services.alerts.engine import AlertEngine
    from services.alerts.store import AlertStore

    engine = AlertEngine(line_plant(target=TARGET, alerts=ALERTS), AlertStore(store))
    pages: list[int] = []
    for now, record in run.open_shift:
        engine.observe_record(record, now)
        pages += [n.created_at for n in engine.evaluate(now) if n.kind == "firing"]
    fired = sorted(a.fired_at for a in engine.alerts() if a.fired_at is not None)
    return fired, pages


@pytest.mark.parametrize("seed", [1, 2])
def test_forecast_alert_fires_early_on_a_slow_shift_and_never_on_a_good_one(
    tmp_path: Path, seed: int
) -> None:
    fired, pages = forecast_alerts(forecast_run("slow", seed), tmp_path / "slow.db")
    assert len(fired) == 1, "one alert for the line's shift"
    assert fired[0] <= START + 2 * HOUR  # well before the end: in the first quarter
    assert pages
    assert min(pages) == fired[0]
    assert forecast_alerts(forecast_run("good", seed), tmp_path / "good.db") == ([], [])
