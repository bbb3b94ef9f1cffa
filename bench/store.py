"""KPI store benchmark: how many KPI records per second `KpiHistory.upsert` writes.

    python -m bench.store                      # 100,000 records, batches of 10,000
    python -m bench.store --records 1000000 --batch 50000 --memory

Records look like the core's (1,000 machines on 20 lines, plus line records, `1m`
windows, a downtime reason or two each). Three passes over the same keys, each timed
from the list of dicts to the committed statement (validation, the Polars frame, the
per-key dedup and DuckDB's `INSERT ... ON CONFLICT DO UPDATE`):

1. insert: every key is new;
2. update: the same keys again, open records with new figures (the streaming case);
3. final: the same keys closed (`final` true).

Figures are printed, never asserted (the goal, >= 20,000 records/s, is a PASS/MISS line);
the exit code is 0 whatever they are.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from linepulse.config import parse_config
from services.kpi.store import KpiStore

GOAL_PER_S: Final = 20_000
MACHINES: Final = 1000
PER_LINE: Final = 50
START: Final = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
REASONS: Final = ("jam", "material_shortage", "electrical")


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_records(count: int, *, final: bool, seed: int) -> list[dict[str, Any]]:
    """`count` records over 1,000 machines (and their 20 lines), one minute after another."""
    scopes: list[tuple[str, str | None]] = [
        (f"line-{m // PER_LINE:02d}", f"m{m:04d}") for m in range(MACHINES)
    ]
    scopes += [(f"line-{i:02d}", None) for i in range(MACHINES // PER_LINE)]
    records = []
    for i in range(count):
        line, machine = scopes[i % len(scopes)]
        start = START + timedelta(minutes=i // len(scopes))
        down = float((i * 7 + seed) % 20)
        run = 60.0 - down
        parts = int(run) * 2
        rejects = (i + seed) % 3
        records.append(
            {
                "site": "bench",
                "line": line,
                "machine": machine,
                "window": "1m",
                "window_start": _iso(start),
                "window_end": _iso(start + timedelta(minutes=1)),
                "shift": None,
                "planned_s": 60.0,
                "run_s": run,
                "downtime_s": down,
                "unknown_s": 0.0,
                "stops": 1 if down else 0,
                "total_count": parts,
                "good_count": parts - rejects,
                "reject_count": rejects,
                "availability": run / 60.0,
                "performance": parts * 0.5 / run,
                "quality": (parts - rejects) / parts,
                "oee": (parts - rejects) * 0.5 / 60.0,
                "mtbf_s": run if down else None,
                "mttr_s": down if down else None,
                "downtime_by_reason": {REASONS[i % 3]: down} if down else {},
                "final": final,
                "revision": 0,
                **_beyond_oee(machine, run, down, parts, rejects),
            }
        )
    return records


def _beyond_oee(
    machine: str | None, run: float, down: float, parts: int, rejects: int
) -> dict[str, Any]:
    """The record's fields beyond OEE, as the core fills them for one product."""
    productive = (parts - rejects) * 0.5
    product = {
        "run_s": run,
        "total_count": parts,
        "good_count": parts - rejects,
        "reject_count": rejects,
        "performance": parts * 0.5 / run,
        "quality": (parts - rejects) / parts,
    }
    return {
        "product": "p1",
        "calendar_s": 60.0,
        "down_s": down,
        "idle_s": 0.0,
        "setup_s": 0.0,
        "small_stops": 0,
        "small_stop_s": 0.0,
        "failures": 1 if down else 0,
        "rework_count": None,
        "effectiveness": parts * 0.5 / run,
        "technical_efficiency": run / 60.0,
        "setup_rate": 0.0,
        "nee": productive / 60.0,
        "teep": productive / 60.0,
        "throughput_per_h": parts * 60.0,
        "scrap_ratio": rejects / parts,
        "rework_ratio": None,
        "first_pass_yield": (parts - rejects) / parts,
        "mttf_s": run if down else None,
        "fully_productive_s": productive,
        "losses": {
            "equipment_failure_s": down,
            "setup_s": 0.0,
            "small_stops_s": 0.0,
            "slow_cycles_s": run - parts * 0.5,
            "startup_rejects_s": 0.0,
            "production_rejects_s": rejects * 0.5,
        },
        "by_product": {"p1": product},
        "constraint": None if machine else "m0000",
        "oee_constraint": None if machine else productive / 60.0,
        "bottleneck": None,
        "bottleneck_s": None,
        "output_count": None if machine else parts - rejects,
        "target_count": None,
        "projected_count": None,
        "coverage": 1.0,
    }


def timed(store: KpiStore, records: list[dict[str, Any]], batch: int) -> float:
    began = time.perf_counter()
    for i in range(0, len(records), batch):
        store.history.upsert(records[i : i + batch])
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--memory", action="store_true", help="DuckDB in memory, not a file")
    args = parser.parse_args()

    plant = parse_config(
        {
            "site": "bench",
            "lines": [
                {
                    "id": f"line-{li:02d}",
                    "machines": [
                        {"id": f"m{m:04d}"} for m in range(li * PER_LINE, (li + 1) * PER_LINE)
                    ],
                }
                for li in range(MACHINES // PER_LINE)
            ],
        }
    )
    passes = {
        "insert": make_records(args.records, final=False, seed=0),
        "update": make_records(args.records, final=False, seed=1),
        "final": make_records(args.records, final=True, seed=2),
    }
    print(
        f"bench.store: {args.records:,} records in batches of {args.batch:,}, "
        f"DuckDB {'in memory' if args.memory else 'file'}, {platform.python_implementation()} "
        f"{platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = ":memory:" if args.memory else Path(tmp) / "kpi.duckdb"
        with KpiStore(path, plant) as store:
            slowest = float("inf")
            for name, records in passes.items():
                seconds = timed(store, records, args.batch)
                rate = len(records) / seconds
                slowest = min(slowest, rate)
                print(
                    f"  {name:<7} {len(records):>10,} records {seconds:8.3f} s "
                    f"{rate:>12,.0f} records/s"
                )
            stored = store.history.history(START, None, "1m")
            finals = sum(1 for r in stored if r["final"])
            print(f"  check: {len(stored):,} keys stored, {finals:,} final (expect both = records)")
    verdict = "PASS" if slowest >= GOAL_PER_S else "MISS"
    print(f"{verdict}: slowest pass {slowest:,.0f} records/s (goal >= {GOAL_PER_S:,})")


if __name__ == "__main__":
    main()
