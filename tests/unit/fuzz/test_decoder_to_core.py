"""Property: hostile telemetry through the real path (Kafka record decode, then the core).

The stream mixes events the decoder must refuse (a time in seconds, NaN, 400-digit
numbers, empty names, unknown fields, garbage bytes) with events it accepts but the core
has to think about (unknown machines and states, counters that run backwards or jump to
1e300, duplicates, a clock that leaps to year 9999 and back). Whatever the stream and its
split into batches, nothing raises, every refusal carries a reason, and every record the
core publishes is plain JSON with finite numbers.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgpack
import orjson
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linepulse.config import PlantConfig, parse_config
from linepulse.events import EARLIEST_MS, parse_ts
from linepulse.wire import MSGPACK, decode_records
from services.kpi.core.engine import Core, initial_state, step
from services.kpi.worker import MAX_AHEAD_MS

BASE = parse_ts("2026-11-02T05:30:00Z")
MAX_TS = 253_402_300_799_999
# The band the worker accepts, with its clock a few hours after the shift start.
ACCEPT = (EARLIEST_MS, BASE + 6 * 3_600_000 + MAX_AHEAD_MS)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def plant() -> PlantConfig:
    """Berlin time (DST, an offset at year 9999), a night shift, products, a reason tree."""
    return parse_config(
        {
            "site": "fuzz",
            "timezone": "Europe/Berlin",
            "shifts": [
                {"name": "early", "start": "06:00", "end": "14:00"},
                {"name": "night", "start": "22:00", "end": "06:00"},
            ],
            "reasons": [{"name": "planned", "planned": True, "codes": ["cleaning"]}],
            "state_map": {"6": "running", "11": "down"},
            "lines": [
                {
                    "id": "l1",
                    "machines": [
                        {"id": "m1", "ideal_cycle_time_s": 1.0, "counter_max": 65535},
                        {
                            "id": "m2",
                            "products": {"a": 0.5, "b": 2.0},
                            "counters": ["good_count", "reject_count"],
                        },
                    ],
                }
            ],
            "kpi": {"lateness_s": 30, "restate_horizon_s": 7200},
        }
    )


CORE = Core.from_config(plant())

timestamps = st.one_of(
    st.integers(0, 4 * 3600).map(lambda s: BASE + s * 1000),  # mostly near the shift start
    st.integers(0, 4 * 3600).map(lambda s: BASE + s * 1000),
    st.sampled_from([0, 1, MAX_TS, MAX_TS + 1, -1, BASE // 1000, BASE * 1000, 2**63, 10**30]),
    st.sampled_from([BASE + 2 * 86_400_000, 4_102_444_800_000, 946_684_799_999]),
    st.sampled_from(
        [
            "2026-11-02T06:00:00Z",
            "2026-11-02T07:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+14:00",
            "2026-03-29T02:30:00+01:00",
            "2026-11-02T06:00:00",
            "tomorrow",
            "",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
texts = st.sampled_from(["m1", "m2", "m1", "m2", "ghost", "", "x" * 300, "ünï/cødé", "\x00"])
signals = st.sampled_from(
    [
        "state",
        "state",
        "total_count",
        "good_count",
        "reject_count",
        "rework_count",
        "product",
        "ideal_cycle_time_s",
        "speed",
        "",
    ]
)
values = st.one_of(
    st.sampled_from(["running", "down", "idle", "planned_stop", "exploding", "", "6", "11", "a"]),
    st.integers(-10, 70_000),
    st.sampled_from([10**30, -(10**30), 10**400, 2**64, 1e300, -0.0, 65535, 65536]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ts": draw(timestamps),
        "machine": draw(texts),
        "signal": draw(signals),
        "value": draw(values),
    }
    if draw(st.booleans()):
        event["reason"] = draw(st.sampled_from(["jam", "cleaning", "", None, 7, "r" * 300]))
    if draw(st.booleans()):
        event["quality"] = draw(st.sampled_from(["good", "uncertain", "bad", "GOOD", None]))
    if draw(st.integers(0, 15)) == 0:
        event[draw(st.sampled_from(["extra", "seq", "line"]))] = draw(values)
    return event


def as_json(event: dict[str, Any]) -> bytes:
    """JSON as producers write it; Python's own non-standard NaN/Infinity included."""
    import json

    return json.dumps(event, allow_nan=True).encode()


@st.composite
def records(draw: st.DrawFn) -> list[tuple[bytes | None, list[tuple[str, bytes]] | None, int]]:
    stream = draw(st.lists(events(), min_size=1, max_size=40))
    stream += draw(st.lists(st.sampled_from(stream), max_size=5))  # duplicates
    out: list[tuple[bytes | None, list[tuple[str, bytes]] | None, int]] = []
    for offset, event in enumerate(stream):
        form = draw(st.integers(0, 9))
        if form == 0:
            out.append((draw(st.binary(max_size=40)), None, offset))  # garbage
        elif form == 1:
            packed = msgpack.packb([event], default=str)
            out.append((packed, [("content-type", MSGPACK.encode())], offset))
        elif form == 2:
            out.append((None, None, offset))  # a tombstone
        else:
            out.append((as_json(event), None, offset))
    return out


def finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


@SETTINGS
@given(stream=records(), seed=st.integers(0, 2**32 - 1))
def test_no_event_stream_makes_the_core_raise(
    stream: list[tuple[bytes | None, list[tuple[str, bytes]] | None, int]], seed: int
) -> None:
    rng = random.Random(seed)
    state = initial_state(CORE)
    taken = 0
    cuts = sorted(rng.sample(range(1, len(stream)), min(3, len(stream) - 1)))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded = decode_records(stream[start:end], "telemetry[0]", accept=ACCEPT)
        assert all(reason.strip() for _, reason, _ in decoded.rejected), decoded.rejected
        assert decoded.events.height + len(decoded.rejected) == end - start
        state, output = step(CORE, state, decoded.events, flush=end == len(stream))
        taken += decoded.events.height
        assert all(r.strip() for r in output.rejected["reason"].to_list()), output.rejected
        for record in output.records:
            orjson.dumps(record)
            assert finite(record), record
    assert state.stats.events == taken


def test_the_decoder_refuses_what_the_core_cannot_take() -> None:
    """The ones found while writing the property above, kept: each is refused with a reason."""
    hostile = [
        b'{"ts": 1, "machine": "m1", "signal": "total_count", "value": ' + b"9" * 400 + b"}",
        b'{"ts": 1, "machine": "m1", "sign\x95l": "state", "value": "running"}',
        b'{"ts": NaN, "machine": "m1", "signal": "state", "value": "running"}',
        b'{"ts": 1793599200000, "machine": "m1", "signal": "total_count", "value": Infinity}',
        b'{"ts": 1793599200, "machine": "", "signal": "state", "value": "running"}',
    ]
    decoded = decode_records([(raw, None, i) for i, raw in enumerate(hostile)], accept=ACCEPT)
    assert decoded.events.is_empty()
    assert [where for where, _, _ in decoded.rejected] == [f"record@{i}" for i in range(5)]
    assert "outside the 64-bit integer range" in decoded.rejected[0][1]
    assert "malformed JSON" in decoded.rejected[1][1]
    _, output = step(CORE, initial_state(CORE), decoded.events, flush=True)
    assert output.records == []
    assert isinstance(output.rejected, pl.DataFrame)


def test_times_the_core_would_walk_decades_for_are_refused_by_the_worker_band() -> None:
    """Year 9999 made the core raise OverflowError; a leap from 2026 to 3000, or a first
    batch reaching back to 1970, kept it busy for over a minute.
    The worker's band refuses them with a reason before the core sees them."""
    times = [MAX_TS, 32_503_680_000_000, 0, BASE]
    stream = [
        (orjson.dumps({"ts": ts, "machine": "m1", "signal": "state", "value": "running"}), None, i)
        for i, ts in enumerate(times)
    ]
    decoded = decode_records(stream, "telemetry[0]", accept=ACCEPT)
    assert decoded.events["ts"].to_list() == [BASE]
    reasons = [reason for _, reason, _ in decoded.rejected]
    assert len(reasons) == 3
    assert all(r.startswith("ts outside the accepted range: ") for r in reasons), reasons
    assert "9999-12-31T23:59:59Z" in reasons[0]
    _, output = step(CORE, initial_state(CORE), decoded.events, flush=True)
    assert output.records
