"""A peer of `bench/peers.py`: the Quix Streams peer's aggregation, written in Bytewax.

    python -m bench.peer_bytewax --broker 127.0.0.1:9092 --input TOPIC --output TOPIC

The same job as `bench/stream_peer_quix.py`, so that the two peers and LinePulse are
compared on one piece of work. It reads telemetry as one JSON event per record (keyed by
machine) with Bytewax's own Kafka connector (`bytewax.connectors.kafka`, confluent-kafka),
takes event time from the event's `ts` (RFC 3339 or epoch ms) and, per machine and
tumbling 1-minute event-time window (aligned to the epoch, 10 s of allowed lateness like
LinePulse's `kpi.lateness_s`), computes:

- `samples`: the KPI samples in the window (state, total_count, reject_count);
- `parts`, `rejects`: sums of the positive steps of `total_count` and `reject_count` (a
  step down is a reset: the new value counts from zero; a machine's first sample only
  sets the baseline), kept per machine in a `stateful_map`;
- `run_ms`, `down_ms`: each `state` sample credits the time since the previous one to the
  previous state (`running`, or `down`/`idle`/`changeover`), in the window of the new
  sample: a state is not split at window boundaries, as in the Quix peer.

Analog tags are read, deserialised and dropped. Each window's result goes to `--output`
as JSON (`start`, `end` in epoch ms and the fields above) when it closes.

Differences from the Quix peer, both Bytewax's design: Bytewax's Kafka source assigns
partitions itself and keeps offsets in its own recovery snapshots (when recovery is
configured; it is not here), never in a consumer group, so it commits nothing to Kafka;
and it is run here with `tail=False`, so it stops at the end of every partition and
closes the windows still open there (Quix's `.final()` never emits those). Without a
committed offset to watch, the benchmark cannot time it from the outside the way it
times the others: it reports its own timing on stderr as one line,
`bytewax peer: {"events": N, "first_event": T0, "last_event": T1, "done": T2, ...}` with
wall-clock (epoch) seconds: T0 when the first record was deserialised, T1 the last, T2
when the dataflow had finished (every window closed and written).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias

import orjson
from bytewax import operators as op
from bytewax.connectors.kafka import (
    KafkaError,
    KafkaSink,
    KafkaSinkMessage,
    KafkaSource,
    KafkaSourceMessage,
)
from bytewax.dataflow import Dataflow
from bytewax.operators import windowing as win
from bytewax.run import cli_main

# The same rules as bench/stream_peer_quix.py; not imported from there, since importing
# it would load Quix Streams into this process and count against its memory.
KPI_SIGNALS: Final = frozenset({"state", "total_count", "reject_count"})
COUNTERS: Final = {"total_count": "parts", "reject_count": "rejects"}
DOWN_STATES: Final = frozenset({"down", "idle", "changeover"})
WINDOW: Final = timedelta(minutes=1)
GRACE: Final = timedelta(seconds=10)
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
FIELDS: Final = ("samples", "parts", "rejects", "run_ms", "down_ms")

Event = dict[str, Any]
Sample = tuple[int, dict[str, int]]  # event time (epoch ms), the sample's contribution


@dataclass
class Timing:
    """What the benchmark needs to time this process from its own records."""

    events: int = 0
    first_event: float | None = None
    last_event: float = 0.0
    late: int = 0


TIMING = Timing()


def event_ms(event: Event) -> int | None:
    """Event time in epoch ms from the event's own `ts` (RFC 3339 text or epoch ms)."""
    ts = event.get("ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return int(ts)
    if isinstance(ts, str):
        return int(datetime.fromisoformat(ts).timestamp() * 1000)
    return None


# An explicit alias: without the `bench` extra installed mypy sees bytewax's names as Any.
Message: TypeAlias = (
    KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]
)


def parse(message: Message) -> tuple[str, Event] | None:
    """A record as (machine, event), or None for what is not a KPI sample of a machine.

    The source raises on a consumer error (`raise_on_errors`), so errors never get here.
    """
    if isinstance(message, KafkaError):
        return None
    now = time.time()
    if TIMING.first_event is None:
        TIMING.first_event = now
    TIMING.events += 1
    TIMING.last_event = now
    try:
        event = orjson.loads(message.value or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("signal") not in KPI_SIGNALS:
        return None
    machine = message.key.decode() if message.key else event.get("machine")
    ts = event_ms(event)
    if not isinstance(machine, str) or ts is None:
        return None
    event["_ms"] = ts
    return machine, event


def increments(state: dict[str, Any] | None, event: Event) -> tuple[dict[str, Any], Sample]:
    """One sample's contribution, and the machine's state (last counter values, last state
    and since when) carried to its next sample."""
    state = state if state is not None else {}
    out = {"samples": 1, "parts": 0, "rejects": 0, "run_ms": 0, "down_ms": 0}
    ts: int = event["_ms"]
    signal = event["signal"]
    if signal in COUNTERS:
        new = int(event["value"])
        old = state.get(signal)
        state[signal] = new
        if old is not None:
            out[COUNTERS[signal]] = new - old if new >= old else new
    else:
        previous, since = state.get("state"), state.get("since")
        if previous is not None and since is not None and ts > since:
            if previous == "running":
                out["run_ms"] = ts - since
            elif previous in DOWN_STATES:
                out["down_ms"] = ts - since
        state["state"], state["since"] = event["value"], ts
    return state, (ts, out)


def sample_time(sample: Sample) -> datetime:
    return datetime.fromtimestamp(sample[0] / 1000, UTC)


def no_wake_up(close: datetime) -> datetime | None:
    """Event time here is not wall-clock time: windows close on later events or at the end
    of the input, never on a timer."""
    return None


def empty() -> dict[str, int]:
    return dict.fromkeys(FIELDS, 0)


def fold(acc: dict[str, int], sample: Sample) -> dict[str, int]:
    for name, value in sample[1].items():
        acc[name] += value
    return acc


def merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {name: a[name] + b[name] for name in FIELDS}


def count_late(step_id: str, item: object) -> None:
    TIMING.late += 1


def result(
    item: tuple[str, tuple[int, dict[str, int]]],
) -> KafkaSinkMessage[bytes | None, bytes | None]:
    machine, (window_id, acc) = item
    # Tumbling windows aligned to the epoch: window n starts at n lengths after it.
    start = window_id * int(WINDOW.total_seconds() * 1000)
    value = {"start": start, "end": start + int(WINDOW.total_seconds() * 1000), **acc}
    return KafkaSinkMessage(machine.encode(), orjson.dumps(value))


def build(broker: str, source: str, sink: str) -> Dataflow:
    flow = Dataflow("linepulse-peer")
    records = op.input("in", flow, KafkaSource([broker], [source], tail=False))
    samples = op.filter_map("parse", records, parse)
    keyed = op.stateful_map("increments", samples, increments)
    clock = win.EventClock(sample_time, wait_for_system_duration=GRACE, to_system_utc=no_wake_up)
    windows = win.fold_window(
        "window",
        keyed,
        clock,
        win.TumblingWindower(WINDOW, EPOCH),
        empty,
        fold,
        merge,
        ordered=False,  # the sums do not depend on the order, and Quix does not reorder
    )
    op.inspect("late", windows.late, count_late)
    op.output("out", op.map("result", windows.down, result), KafkaSink([broker], sink))
    return flow


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peer_bytewax",
        description="Per-machine 1-minute counts and state times with Bytewax, to the end "
        "of the input topic.",
    )
    parser.add_argument("--broker", required=True, help="Kafka bootstrap HOST:PORT")
    parser.add_argument("--input", required=True, help="telemetry topic (JSON events)")
    parser.add_argument("--output", required=True, help="topic for the window results")
    args = parser.parse_args(argv)
    flow = build(args.broker, args.input, args.output)
    cli_main(flow, workers_per_process=1)  # type: ignore[no-untyped-call,unused-ignore]  # 0.21
    report = {
        "events": TIMING.events,
        "first_event": TIMING.first_event,
        "last_event": TIMING.last_event,
        "done": time.time(),
        "late": TIMING.late,
    }
    print(f"bytewax peer: {orjson.dumps(report).decode()}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
