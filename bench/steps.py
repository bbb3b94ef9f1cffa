"""Core steps in-process: what a worker's poll costs the core, by the size of the poll.

    python -m bench.steps                        # polls of 1,000 / 10,000 / 40,000 events
    python -m bench.steps --sizes 2000 --phases  # and where a partition's step goes
    python -m bench.steps --threads              # the partitions side by side, as the worker

No broker, no worker process: the stream benchmark's plant (bench/throughput.py: 1,000
machines, 6 signals a machine a second) and its workload, split by each line's home
partition into `--partitions` core states, each brought up to date with `--warmup`
events as a worker's would be. Then `--polls` polls of each size: each partition's share
of the poll stepped (asking for the open `1m` records, as the worker asks for the kinds
due), one partition after another (or in threads with `--threads`). It prints the
median and mean of a poll, and the CPU the process used meanwhile (cores), beside the
same polls' events per second: a poll that costs the same whatever its size is the
core's cost per step, not per event (docs/operations.md#benchmarks).

`--phases` times the core's main functions (wall clock, summed over the polls) and
prints them per partition step. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Final

import polars as pl

from bench.harness import busy_note, machine_lines
from bench.throughput import as_events, kafka_block, plant_text, workload
from linepulse.bus.partitions import machine_homes
from linepulse.config import WindowKind, load_config
from services.kpi.core import engine
from services.kpi.core.engine import Core, CoreState, initial_state

DEFAULT_SIZES: Final = (1_000, 10_000, 40_000)
# The functions `--phases` times: the core's stages of a step.
PHASES: Final = (
    "prepare",
    "_judge",
    "_dirty",
    "_recompute",
    "_apply_deltas",
    "_restated",
    "_candidates",
    "_emit",
)
WARMUP_BATCH: Final = 50_000


@contextmanager
def timed_phases(spent: dict[str, float]) -> Iterator[None]:
    """Each of `PHASES` timed into `spent` (seconds) while inside; restored after."""
    originals = {name: getattr(engine, name) for name in PHASES}

    def timer(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - began

        return run

    for name, function in originals.items():
        setattr(engine, name, timer(name, function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(engine, name, function)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=400_000, help="events before measuring")
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)))
    parser.add_argument("--polls", type=int, default=15, help="polls of each size")
    parser.add_argument("--threads", action="store_true", help="step partitions side by side")
    parser.add_argument("--phases", action="store_true", help="time the core's stages")
    parser.add_argument(
        "--costs", action="store_true", help="with rates: records carry their loss_cost"
    )
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.machines < 1 or args.partitions < 1 or args.polls < 1 or min(sizes) < 1:
        parser.error("--machines, --partitions, --polls and --sizes must be >= 1")

    with tempfile.TemporaryDirectory(prefix="linepulse-steps-") as folder:
        config = Path(folder) / "plant.yaml"
        kafka = kafka_block("steps", "steps", args.partitions)
        text = plant_text(args.machines, kafka)
        if args.costs:  # a minute and a part priced at the plant (docs/costs.md)
            text += "costs: {downtime_minute_cost: 10.0, good_part_value: 0.5}\n"
        config.write_text(text, "utf-8")
        plant = load_config(config)
    homes = machine_homes(plant, args.partitions)
    needed = args.warmup + sum(sizes) * args.polls
    events = as_events(workload(args.machines, needed, 42), homes)
    core = Core.from_config(plant)
    states: dict[int, CoreState] = {}
    for part in range(args.partitions):
        lines = frozenset(li.id for li in plant.lines if homes.get(li.machines[0].id) == part)
        state = initial_state(core, lines)
        mine = events.head(args.warmup).filter(pl.col("_home") == part).drop("_home")
        for start in range(0, mine.height, WARMUP_BATCH):
            state, _ = engine.step(core, state, mine.slice(start, WARMUP_BATCH))
        states[part] = state

    for line in machine_lines():
        print(line)
    print(busy_note())
    way = "side by side in threads" if args.threads else "one after another"
    priced = ", losses priced" if core.pricing is not None else ""
    print(
        f"{args.partitions} partition states of {args.machines:,} machines{priced}, warmed with "
        f"{args.warmup:,} events; each poll's partitions stepped {way}, asking for 1m:"
    )
    print(f"{'events a poll':>14} {'median ms':>10} {'mean ms':>9} {'cores':>6} {'events/s':>10}")
    offset = args.warmup
    spent: dict[str, float] = {}
    pool = ThreadPoolExecutor(args.partitions)
    asked: frozenset[WindowKind] = frozenset({"1m"})

    def step_part(part: int, batch: pl.DataFrame) -> tuple[int, CoreState]:
        mine = batch.filter(pl.col("_home") == part).drop("_home")
        return part, engine.step(core, states[part], mine, open_records=asked)[0]

    with timed_phases(spent) if args.phases else nullcontext():
        for size in sizes:
            took: list[float] = []
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            for _ in range(args.polls):
                batch = events.slice(offset, size)
                offset += size
                began = time.perf_counter()
                if args.threads:
                    jobs = [pool.submit(step_part, part, batch) for part in states]
                    stepped = [job.result() for job in jobs]
                else:
                    stepped = [step_part(part, batch) for part in list(states)]
                states.update(stepped)
                took.append(time.perf_counter() - began)
            cores = (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
            median = statistics.median(took)
            print(
                f"{size:>14,} {median * 1000:>10.0f} {statistics.fmean(took) * 1000:>9.0f} "
                f"{cores:>6.2f} {size / median:>10,.0f}"
            )
    pool.shutdown()
    if args.phases:
        steps = len(sizes) * args.polls * args.partitions
        print(f"where a partition's step goes (wall ms, mean over {steps:,} steps):")
        for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<14} {seconds / steps * 1000:7.2f}")


if __name__ == "__main__":
    main()
