"""Prometheus metrics of the KPI service: one bundle, created from a registry passed in.

`KpiMetrics.create(registry)` registers every metric on `registry` (tests pass a fresh
`CollectorRegistry`; `main` passes one it also hands to `create_app`, which serves it on
`/metrics`). Create the bundle once per registry: registering a name twice raises.

KPI gauges, labelled (site, line, machine, window), show the CURRENT window of each key,
as `observe_records` last set them (once per batch, never per event):

| metric | unit | from the record |
|---|---|---|
| `linepulse_oee_ratio` | 0..1 (can exceed 1 if an ideal cycle time is wrong) | `oee` |
| `linepulse_availability_ratio` | 0..1 | `availability` |
| `linepulse_performance_ratio` | 0..1, not capped | `performance` |
| `linepulse_quality_ratio` | 0..1 | `quality` |
| `linepulse_coverage_ratio` | 0..1 | `coverage`: share of planned time with data |
| `linepulse_planned_seconds` | s | `planned_s` |
| `linepulse_run_seconds` | s | `run_s` |
| `linepulse_downtime_seconds` | s | `downtime_s` |
| `linepulse_unknown_seconds` | s | `unknown_s` |
| `linepulse_parts{kind}` | parts; kind = total, good, reject | the counts |
| `linepulse_stops` | stops | `stops` |

Decisions:

- Line records (`machine` None) carry `machine=""`, so one metric serves both scopes:
  `linepulse_oee_ratio{machine=""}` is the line's figure.
- Parts in a window go up and restart at each window: that is a gauge, not a counter.
  Prometheus reserves `_total` for counters (prometheus_client appends it to counters
  only), so the gauge is `linepulse_parts` with `kind` = total | good | reject
  (`good` can dip below 0 in a `1m` window, see the record schema).
- A ratio that is null in the record (zero denominator) is set to NaN, not removed: the
  series keeps existing, Grafana draws NaN as no value, and an `oee < 0.6` rule is simply
  not true, while `absent(...)` still means "no record at all".
- `linepulse_coverage_ratio` sits beside the ratios it qualifies: an OEE of the current
  window that rests on 20 % of its planned time is no evidence of a failure, so the
  Prometheus OEE rule (deploy/prometheus/rules) only judges it at a coverage of 0.8 or
  more, like the alerts service's `min_coverage`. Unknown time itself stays
  `linepulse_unknown_seconds`; there are no per-loss gauges (the losses waterfall is on
  the live board and in the records).
- The current window of a key is the one with the latest `window_start`; within it, the
  record with the highest (revision, final), ties to the later arrival (the store's
  rule). So a final record of the previous window, which arrives after the next window
  opened, or a late restatement, never sets a gauge back to an older window.
- Labels are bounded by the plant config: site, line, machine and window come from the
  core's records, which only name configured lines and machines; with `plant` given to
  `create`, records of any other line or machine are ignored. `source`, `reason` and
  `partition` of the service metrics must be values from a fixed set (an ingester name,
  a rejection category such as `malformed` or `unknown_machine`, a partition number),
  never a message or a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from linepulse.config import PlantConfig
from linepulse.costs import Pricing

LABELS: Final = ("site", "line", "machine", "window")
PART_KINDS: Final = ("total", "good", "reject")
# Batches and checkpoints take milliseconds to seconds.
SECONDS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

MetricKey = tuple[str, str, str, str]  # site, line, machine ("" for a line), window
_Order = tuple[datetime, int, bool]  # window_start, revision, final


@dataclass(frozen=True)
class KpiMetrics:
    """The service's metrics. KPI gauges are set by `observe_records`; the worker updates
    the service metrics directly (`metrics.events_in.labels(source="opcua").inc(n)`)."""

    # KPI gauges: the current window per (site, line, machine, window).
    oee: Gauge
    availability: Gauge
    performance: Gauge
    quality: Gauge
    coverage: Gauge
    planned: Gauge
    run: Gauge
    downtime: Gauge
    unknown: Gauge
    parts: Gauge
    stops: Gauge
    # Service health.
    events_in: Counter
    events_rejected: Counter
    events_late: Counter
    events_too_late: Counter
    counter_jumps: Counter
    dlq: Counter
    consumer_lag: Gauge
    batch_seconds: Histogram
    records_published: Counter
    checkpoint_seconds: Histogram
    loss_cost: Gauge
    known: frozenset[tuple[str, str]] | None = None
    # The rates that price machine records (None: no costs configured, no money).
    pricing: Pricing | None = None
    _shown: dict[MetricKey, _Order] = field(default_factory=dict, repr=False, compare=False)
    # Each key's labelled gauges, looked up once: `labels()` costs a lock and a lookup per
    # call, and a poll of the API sets ~15 of them for each of thousands of keys.
    _children: dict[MetricKey, _KeyGauges] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def create(cls, registry: CollectorRegistry, plant: PlantConfig | None = None) -> KpiMetrics:
        """Register the metrics on `registry`. With `plant`, KPI gauges are only set for
        its lines and machines."""

        def gauge(name: str, doc: str, labels: tuple[str, ...] = LABELS) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, buckets=SECONDS_BUCKETS, registry=registry)

        known = None
        pricing = None if plant is None else Pricing(plant)
        if plant is not None:
            known = frozenset(
                {(line.id, m.id) for line in plant.lines for m in line.machines}
                | {(line.id, "") for line in plant.lines}
            )
        return cls(
            oee=gauge(
                "linepulse_oee_ratio",
                "OEE of the current window: availability x performance x quality "
                "(NaN when undefined)",
            ),
            availability=gauge(
                "linepulse_availability_ratio",
                "Run time / planned time of the current window (ISO 22400-2 APT/PBT; "
                "NaN without planned time)",
            ),
            performance=gauge(
                "linepulse_performance_ratio",
                "Ideal cycle time x parts / run time of the current window, not capped "
                "(NaN without run time or ideal cycle time)",
            ),
            quality=gauge(
                "linepulse_quality_ratio",
                "Good parts / total parts of the current window (NaN without parts)",
            ),
            coverage=gauge(
                "linepulse_coverage_ratio",
                "Share of the current window's planned time with usable data: "
                "(planned - unknown) / planned (NaN without planned time)",
            ),
            planned=gauge(
                "linepulse_planned_seconds",
                "Planned production time of the current window so far, in seconds",
            ),
            run=gauge(
                "linepulse_run_seconds",
                "Time running within planned time of the current window, in seconds",
            ),
            downtime=gauge(
                "linepulse_downtime_seconds",
                "Time down, idle or in changeover within planned time of the current "
                "window, in seconds",
            ),
            unknown=gauge(
                "linepulse_unknown_seconds",
                "Planned time of the current window without usable data, in seconds",
            ),
            parts=gauge(
                "linepulse_parts",
                "Parts made in the current window, by kind (total, good, reject)",
                (*LABELS, "kind"),
            ),
            stops=gauge(
                "linepulse_stops",
                "Transitions from running into a downtime state in the current window",
            ),
            events_in=counter(
                "linepulse_events_in", "Telemetry events read, by source", ("source",)
            ),
            events_rejected=counter(
                "linepulse_events_rejected",
                "Telemetry events rejected, by reason category (each also goes to the DLQ)",
                ("reason",),
            ),
            events_late=counter(
                "linepulse_events_late",
                "Events behind the watermark but within the restatement horizon (used; "
                "they may restate closed windows)",
            ),
            events_too_late=counter(
                "linepulse_events_too_late",
                "Events behind the restatement horizon, rejected and reported",
            ),
            counter_jumps=counter(
                "linepulse_counter_jumps",
                "Implausible counter increments not counted (PLC restarts, uninitialised "
                "zeros, spikes), by machine; each also goes to the DLQ",
                ("machine",),
            ),
            dlq=counter("linepulse_dlq", "Records written to the dead-letter topic"),
            consumer_lag=gauge(
                "linepulse_consumer_lag",
                "Records between the consumer's position and the end of the partition",
                ("partition",),
            ),
            batch_seconds=histogram(
                "linepulse_batch_seconds", "Time to process one batch of telemetry, in seconds"
            ),
            records_published=counter(
                "linepulse_records_published",
                "KPI records published to the kpi topic, by final (true, false)",
                ("final",),
            ),
            checkpoint_seconds=histogram(
                "linepulse_checkpoint_seconds",
                "Time to write one state checkpoint, in seconds",
            ),
            loss_cost=gauge(
                "linepulse_loss_cost",
                "The six big losses of a machine's current window in money, at the plant "
                "config's rates (docs/costs.md; NaN where they cannot be priced); a line's "
                "is the sum over its machines",
            ),
            known=known,
            pricing=pricing if pricing is not None and pricing.configured else None,
        )

    def observe_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Set the KPI gauges from a batch of KPI records (the record contract, times as
        RFC 3339 strings or aware datetimes): per key, to the record of its current window
        (see the module docstring)."""
        best: dict[MetricKey, tuple[_Order, Mapping[str, Any]]] = {}
        for record in records:
            machine = record["machine"] or ""
            if self.known is not None and (record["line"], machine) not in self.known:
                continue
            key = (record["site"], record["line"], machine, record["window"])
            order = (_time(record["window_start"]), record["revision"], record["final"])
            previous = best.get(key)
            if previous is None or order >= previous[0]:
                best[key] = (order, record)
        for key, (order, record) in best.items():
            shown = self._shown.get(key)
            if shown is not None and order < shown:
                continue
            self._shown[key] = order
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = self._labelled(key)
            ratios, seconds, parts = children
            for gauge, name in zip(ratios, _RATIO_FIELDS, strict=True):
                gauge.set(_value(record[name]))
            for gauge, name in zip(seconds, _PLAIN_FIELDS, strict=True):
                gauge.set(record[name])
            for gauge, name in zip(parts, _PART_FIELDS, strict=True):
                gauge.set(record[name])
            if self.pricing is not None and record["machine"]:
                priced = self.pricing.price(record)
                self.loss_cost.labels(*key).set(math.nan if priced is None else priced.total)

    def _labelled(self, key: MetricKey) -> _KeyGauges:
        """The KPI gauges of one key, in the order of the `_*_FIELDS` they show."""
        ratios = (self.oee, self.availability, self.performance, self.quality, self.coverage)
        plain = (self.planned, self.run, self.downtime, self.unknown, self.stops)
        return (
            tuple(gauge.labels(*key) for gauge in ratios),
            tuple(gauge.labels(*key) for gauge in plain),
            tuple(self.parts.labels(*key, kind) for kind in PART_KINDS),
        )


# What each of a key's gauges shows (`KpiMetrics._labelled` gives them in this order).
_RATIO_FIELDS: Final = ("oee", "availability", "performance", "quality", "coverage")
_PLAIN_FIELDS: Final = ("planned_s", "run_s", "downtime_s", "unknown_s", "stops")
_PART_FIELDS: Final = tuple(f"{kind}_count" for kind in PART_KINDS)
_KeyGauges = tuple[tuple[Gauge, ...], tuple[Gauge, ...], tuple[Gauge, ...]]


def _value(ratio: float | None) -> float:
    return math.nan if ratio is None else ratio


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
