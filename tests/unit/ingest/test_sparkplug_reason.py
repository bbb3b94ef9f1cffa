"""A Sparkplug `reason` metric is the downtime reason of the `state` sample of the same
time, as the simulator publishes it and the OPC-UA reason node is read: found by the soak
test (bench/soak.py), where Sparkplug machines' stops reached Kafka without their reason."""

from __future__ import annotations

from services.ingest import sparkplug as sp
from services.ingest.sparkplug import Metric
from tests.unit.ingest.test_sparkplug import T0, Edge, born, host


def states(edge: Edge) -> list[tuple[object, ...]]:
    frame, _ = edge.batch.take()
    return [
        (row["ts"], row["signal"], row["reason"])
        for row in frame.iter_rows(named=True)
        if row["signal"] in ("state", "reason")
    ]


def test_a_reason_before_its_state_goes_with_it_and_is_no_sample_of_its_own() -> None:
    edge = Edge(host())
    born(edge)
    birth = [Metric("state", 2, "running", sp.STRING), Metric("reason", 9, "", sp.STRING)]
    assert edge.send(sp.DBIRTH, birth, device="press1") is None
    edge.batch.take()
    data = [
        Metric(None, 9, "jam", sp.UNKNOWN, timestamp_ms=T0 + 100),
        Metric(None, 2, "down", sp.UNKNOWN, timestamp_ms=T0 + 100),
    ]
    assert edge.send(sp.DDATA, data, device="press1") is None
    assert states(edge) == [(T0 + 100, "state", "jam")]


def test_an_empty_reason_is_none_and_a_reason_of_another_time_is_not_taken() -> None:
    edge = Edge(host())
    born(edge)
    data = [
        Metric("state", 2, "running", sp.STRING, timestamp_ms=T0 + 200),
        Metric("reason", 9, "", sp.STRING, timestamp_ms=T0 + 200),
        Metric("reason", 9, "jam", sp.STRING, timestamp_ms=T0 + 300),
        Metric("state", 2, "down", sp.STRING, timestamp_ms=T0 + 400),
    ]
    assert edge.send(sp.DBIRTH, data, device="press1") is None
    assert states(edge) == [(T0 + 200, "state", None), (T0 + 400, "state", None)]


def test_a_birth_carries_the_reason_after_the_state() -> None:
    edge = Edge(host())
    born(edge)
    birth = [
        Metric("state", 2, "down", sp.STRING, timestamp_ms=T0 + 50),
        Metric("reason", 9, "motor", sp.STRING, timestamp_ms=T0 + 50),
    ]
    assert edge.send(sp.DBIRTH, birth, device="press1") is None
    assert states(edge) == [(T0 + 50, "state", "motor")]


def test_a_rebirth_after_a_death_puts_the_state_back_from_its_receipt() -> None:
    """Found by the soak test too: after a broker restart the births repeat the state with
    the time it began, before the death's `unknown` mark, so the machine stayed unknown in
    event time until its state next changed."""
    edge = Edge(host())
    assert edge.send(sp.NBIRTH, [Metric(sp.BDSEQ, None, 1, sp.UINT64)]) is None
    birth = [Metric("state", 2, "running", sp.STRING, timestamp_ms=T0)]
    assert edge.send(sp.DBIRTH, birth, device="press1", at=T0) is None
    edge.send(sp.NDEATH, [Metric(sp.BDSEQ, None, 1, sp.UINT64)], at=T0 + 10_000)
    frame, _ = edge.batch.take()
    assert [
        (r["ts"], r["value_str"]) for r in frame.iter_rows(named=True) if r["machine"] == "press1"
    ] == [(T0, "running"), (T0 + 10_005, "unknown")]
    # The new session's births: the state unchanged since T0, received at T0 + 20_005.
    assert edge.send(sp.NBIRTH, [Metric(sp.BDSEQ, None, 2, sp.UINT64)], at=T0 + 20_000) is None
    assert edge.send(sp.DBIRTH, birth, device="press1", at=T0 + 20_000) is None
    frame, _ = edge.batch.take()
    assert [(r["ts"], r["value_str"]) for r in frame.iter_rows(named=True)] == [
        (T0 + 20_005, "running")
    ]
    # Later data keeps its own times, and an old DDATA is not moved (a late event).
    data = [Metric(None, 2, "down", sp.UNKNOWN, timestamp_ms=T0 + 30_000)]
    assert edge.send(sp.DDATA, data, device="press1", at=T0 + 30_000) is None
    assert states(edge) == [(T0 + 30_000, "state", None)]
