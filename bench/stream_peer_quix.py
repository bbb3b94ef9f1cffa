"""The peer of `bench/stream.py`: the same per-machine 1-minute aggregation in Quix Streams.

    python -m bench.stream_peer_quix --broker 127.0.0.1:9092 --input TOPIC --output TOPIC \
        --group GROUP --state-dir DIR [--commit-interval 1.0]

What a user would otherwise write with Quix Streams for the 1-minute part of LinePulse's
job. It reads telemetry as one JSON event per record, keyed by machine (the workload any
producer can send, and that `linepulse kpi` also accepts), with event time from the
event's `ts` (RFC 3339 or epoch ms). Per machine (the record key) and tumbling 1-minute
event-time window, with 10 s grace like LinePulse's `kpi.lateness_s`, it emits:

- `samples`: the KPI samples in the window (state, total_count, reject_count);
- `parts`, `rejects`: sums of the positive steps of `total_count` and `reject_count`
  (a step down is a reset: the new value counts from zero; a machine's first sample only
  sets the baseline), kept per machine in Quix state;
- `run_ms`, `down_ms`: each `state` sample credits the time since the previous one to the
  previous state (`running`, or `down`/`idle`/`changeover`). Unlike LinePulse, a state is
  not split at window boundaries, and there is no shift calendar, no planned time, no
  OEE, no line records, no restatements.

Analog tags are read, deserialised and dropped. A window's result goes to `--output` as
JSON when the window closes (`.final()`). Quix keeps its state in RocksDB with changelog
topics (its defaults); offsets are committed every `--commit-interval` seconds. It runs
until SIGTERM or Ctrl-C, then prints how many late events it dropped on stderr.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timedelta
from typing import Any

from quixstreams import Application, State
from quixstreams.dataframe.windows import Count, Sum
from quixstreams.models import TimestampType

KPI_SIGNALS = frozenset({"state", "total_count", "reject_count"})
COUNTERS = {"total_count": "parts", "reject_count": "rejects"}
DOWN_STATES = frozenset({"down", "idle", "changeover"})
WINDOW = timedelta(minutes=1)
GRACE = timedelta(seconds=10)

late_events = 0


def event_time(value: Any, headers: Any, timestamp: int, kind: TimestampType) -> int:
    """Event time in epoch ms from the event's own `ts` (RFC 3339 text or epoch ms)."""
    ts = value.get("ts") if isinstance(value, dict) else None
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return int(ts)
    if isinstance(ts, str):
        return int(datetime.fromisoformat(ts).timestamp() * 1000)
    return timestamp  # not an event: fall back to the record's timestamp


def is_kpi_sample(value: Any) -> bool:
    return isinstance(value, dict) and value.get("signal") in KPI_SIGNALS


def increments(
    value: Any, key: Any, timestamp: int, headers: Any, state: State[str, Any]
) -> dict[str, int]:
    """One sample's contribution: counter steps and the time of the previous state."""
    out = {"parts": 0, "rejects": 0, "run_ms": 0, "down_ms": 0}
    signal = value["signal"]
    if signal in COUNTERS:
        new = int(value["value"])
        old = state.get(signal)
        state.set(signal, new)
        if old is not None:
            out[COUNTERS[signal]] = new - old if new >= old else new
    else:
        previous, since = state.get("state"), state.get("since")
        if previous is not None and since is not None and timestamp > since:
            if previous == "running":
                out["run_ms"] = timestamp - since
            elif previous in DOWN_STATES:
                out["down_ms"] = timestamp - since
        state.set("state", value["value"])
        state.set("since", timestamp)
    return out


def on_late(
    value: Any,
    key: Any,
    timestamp_ms: int,
    late_by_ms: int,
    start: int,
    end: int,
    store_name: str,
    topic: str,
    partition: int,
    offset: int,
) -> bool:
    """Count late events instead of logging each one."""
    global late_events
    late_events += 1
    return False


def build(
    broker: str, source: str, sink: str, group: str, state_dir: str, commit_interval: float
) -> Application:
    app = Application(
        broker_address=broker,
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=commit_interval,
        state_dir=state_dir,
        loglevel="WARNING",
    )
    telemetry = app.topic(
        source, key_deserializer="str", value_deserializer="json", timestamp_extractor=event_time
    )
    output = app.topic(sink, key_serializer="str", value_serializer="json")
    sdf = app.dataframe(telemetry)
    sdf = sdf.filter(is_kpi_sample)
    sdf = sdf.apply(increments, stateful=True, metadata=True)
    sdf = (
        sdf.tumbling_window(WINDOW, grace_ms=GRACE, on_late=on_late)
        .agg(
            samples=Count(),
            parts=Sum("parts"),
            rejects=Sum("rejects"),
            run_ms=Sum("run_ms"),
            down_ms=Sum("down_ms"),
        )
        .final()
    )
    sdf.to_topic(output)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.stream_peer_quix",
        description="Per-machine 1-minute counts and state times with Quix Streams.",
    )
    parser.add_argument("--broker", required=True, help="Kafka bootstrap HOST:PORT")
    parser.add_argument("--input", required=True, help="telemetry topic (JSON events)")
    parser.add_argument("--output", required=True, help="topic for the window results")
    parser.add_argument("--group", required=True, help="consumer group")
    parser.add_argument("--state-dir", required=True, help="Quix state directory")
    parser.add_argument("--commit-interval", type=float, default=1.0, help="seconds (1.0)")
    args = parser.parse_args(argv)
    app = build(
        args.broker, args.input, args.output, args.group, args.state_dir, args.commit_interval
    )
    app.run()
    print(f"quix peer: stopped; {late_events} late events dropped", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
