"""The machine-status step, like the core: plain frames in, statuses and records out, any
batches in any arrival order, no bus."""

from __future__ import annotations

from typing import Any

import polars as pl

from services.kpi.machine_status import LAST_SEEN_STEP_MS, MachineStatus, StatusRecord, step

LINES = {"m1": "l1", "m2": "l1"}
S = 1_000  # ms


def events(*seen: tuple[str, int]) -> pl.DataFrame:
    """The batch's events as the step reads them: machine and event time (epoch ms)."""
    return pl.DataFrame(seen, schema={"machine": pl.String, "ts": pl.Int64}, orient="row")


def states(*samples: tuple[str, int, str, str | None]) -> pl.DataFrame:
    """The core's state samples of a batch (machine, ts, state, reason), sorted by ts."""
    schema = {"machine": pl.String, "ts": pl.Int64, "state": pl.String, "reason": pl.String}
    return pl.DataFrame(samples, schema=schema, orient="row").sort("ts")


def batch(
    statuses: dict[str, MachineStatus], *samples: tuple[str, int, str, str | None], **seen: int
) -> tuple[dict[str, MachineStatus], list[StatusRecord]]:
    """A batch of state samples and, per machine in `seen`, its latest other event."""
    seen_rows = [(m, ts) for m, ts, _, _ in samples] + list(seen.items())
    return step(LINES, statuses, events(*seen_rows), states(*samples))


def brief(records: list[StatusRecord]) -> list[tuple[Any, ...]]:
    return [(r["machine"], r["state"], r["reason"], r["since"], r["last_seen"]) for r in records]


def test_every_change_of_state_or_reason_is_a_record_in_event_time_order() -> None:
    statuses, records = batch(
        {},
        ("m1", 0, "running", None),
        ("m1", 10 * S, "down", None),
        ("m1", 20 * S, "down", "jam"),  # a new reason while down: a change
        ("m1", 30 * S, "down", "jam"),  # a repeat: none
        m1=40 * S,
    )
    assert brief(records) == [
        ("m1", "running", None, 0, 0),  # not the latest: last seen at its own time
        ("m1", "down", None, 10 * S, 10 * S),
        ("m1", "down", "jam", 20 * S, 40 * S),  # the latest: the machine's last seen
    ]
    assert set(records[0]) == {"machine", "line", "state", "reason", "since", "last_seen"}
    assert statuses["m1"] == MachineStatus(
        "l1", "down", since=20 * S, last_seen=40 * S, published_seen=40 * S, reason="jam"
    )


def test_machines_interleave_by_time_then_name() -> None:
    _, records = batch(
        {},
        ("m2", 0, "running", None),
        ("m1", 0, "running", None),
        ("m2", 5 * S, "idle", None),
        ("m1", 7 * S, "down", None),
    )
    assert [(r["machine"], r["since"]) for r in records] == [
        ("m1", 0),
        ("m2", 0),
        ("m2", 5 * S),
        ("m1", 7 * S),
    ]


def test_a_state_older_than_the_current_one_arriving_later_changes_nothing() -> None:
    statuses, _ = batch({}, ("m1", 60 * S, "down", "jam"))
    # The sample from before the stop arrives in a later batch (a PLC's buffer flushed).
    after, records = batch(statuses, ("m1", 50 * S, "running", None))
    assert records == []
    assert after == statuses


def test_the_same_samples_in_time_order_give_the_same_records_in_one_batch_or_many() -> None:
    samples = [
        ("m1", 0, "running", None),
        ("m1", 10 * S, "down", None),
        ("m2", 12 * S, "idle", None),
    ]
    _, together = batch({}, *samples)
    statuses: dict[str, MachineStatus] = {}
    apart = []
    for sample in samples:
        statuses, records = batch(statuses, sample)
        apart += records
    assert brief(apart) == brief(together)


def test_last_seen_alone_is_published_only_once_it_moved_on_by_a_step() -> None:
    statuses, _ = batch({}, ("m1", 0, "running", None))
    statuses, records = batch(statuses, m1=LAST_SEEN_STEP_MS - 1)
    assert records == []
    assert statuses["m1"].last_seen == LAST_SEEN_STEP_MS - 1  # kept, for the checkpoint
    statuses, records = batch(statuses, m1=LAST_SEEN_STEP_MS)
    assert brief(records) == [("m1", "running", None, 0, LAST_SEEN_STEP_MS)]
    _, records = batch(statuses, m1=LAST_SEEN_STEP_MS - 2 * S)  # an older event: no news
    assert records == []


def test_the_step_leaves_its_input_alone_and_ignores_unknown_machines() -> None:
    before = {"m1": MachineStatus("l1", "running", since=0, last_seen=0, published_seen=0)}
    copy = dict(before)
    after, records = step(
        LINES, before, events(("m1", 9 * S), ("ghost", 9 * S)), states(("m1", 9 * S, "down", None))
    )
    assert before == copy
    assert set(after) == {"m1"}
    assert brief(records) == [("m1", "down", None, 9 * S, 9 * S)]


def test_an_empty_batch_is_no_news() -> None:
    statuses, _ = batch({}, ("m1", 0, "running", None))
    assert step(LINES, statuses, events(), states()) == (statuses, [])


def test_a_checkpointed_status_loads_from_its_vars() -> None:
    status = MachineStatus("l1", "down", since=1, last_seen=2, published_seen=2, reason="jam")
    assert MachineStatus(**vars(status)) == status
    # One written before `reason` existed loads too.
    old: dict[str, Any] = {"line": "l1", "state": "down", "since": 1, "last_seen": 2}
    assert MachineStatus(**old).reason is None
