"""Prometheus metrics of the ingest service: one bundle, registered on a registry passed in.

Updated per batch or per connection event, never per sample (a labelled `inc` costs about
a microsecond). `source` is a configured source id; `reason` a bounded rejection category
(`reason_kind` of the message), never the message itself.

| metric | what |
|---|---|
| `linepulse_ingest_events_total{source}` | samples accepted from a source |
| `linepulse_ingest_messages_total{source}` | MQTT publishes, OPC-UA notifications |
| `linepulse_ingest_rejected_total{source,reason}` | inputs sent to the DLQ |
| `linepulse_ingest_withheld_total{source,reason}` | OPC-UA values with no reading to emit |
| `linepulse_ingest_reconnects_total{source}` | connections re-established after a loss |
| `linepulse_ingest_backfilled_total{source}` | OPC-UA values from history, for a gap |
| `linepulse_ingest_connected{source}` | 1 while the source's session is up |
| `linepulse_ingest_mqtt_inbox_messages{source}` | MQTT messages received, not yet decoded |
| `linepulse_ingest_mqtt_inbox_dropped_total{source}` | QoS 0 messages dropped: inbox full |
| `linepulse_ingest_buffer_samples` | samples waiting in memory for Kafka |
| `linepulse_ingest_spool_bytes` | bytes waiting in the disk spool for Kafka |
| `linepulse_ingest_backpressure` | 1 while the spool is full and ingesters wait |
| `linepulse_ingest_backpressure_seconds_total` | time ingesters spent waiting on a full spool |
| `linepulse_ingest_sent_total` | samples acknowledged by Kafka |
| `linepulse_ingest_kafka_up` | 1 while sends to Kafka succeed |
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class IngestMetrics:
    events_in: Counter
    messages_in: Counter
    rejected: Counter
    withheld: Counter
    reconnects: Counter
    backfilled: Counter
    connected: Gauge
    mqtt_inbox: Gauge
    mqtt_inbox_dropped: Counter
    buffer_samples: Gauge
    spool_bytes: Gauge
    backpressure: Gauge
    backpressure_seconds: Counter
    sent: Counter
    kafka_up: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=registry)

        return cls(
            events_in=counter(
                "linepulse_ingest_events", "Samples accepted from a source", ("source",)
            ),
            messages_in=counter(
                "linepulse_ingest_messages",
                "Protocol messages received (MQTT publishes, OPC-UA notifications)",
                ("source",),
            ),
            rejected=counter(
                "linepulse_ingest_rejected",
                "Inputs sent to the dead-letter topic, by reason category",
                ("source", "reason"),
            ),
            withheld=counter(
                "linepulse_ingest_withheld",
                "Values received but not emitted: the server had no reading yet "
                "(waiting_for_initial_data) or gave no source timestamp (no_source_timestamp)",
                ("source", "reason"),
            ),
            reconnects=counter(
                "linepulse_ingest_reconnects",
                "Connections re-established after a loss",
                ("source",),
            ),
            backfilled=counter(
                "linepulse_ingest_backfilled",
                "OPC-UA values read from the server's history (HistoryRead) to fill the gap "
                "of a reconnect or an ingester restart",
                ("source",),
            ),
            connected=gauge(
                "linepulse_ingest_connected", "1 while the source's session is up", ("source",)
            ),
            mqtt_inbox=gauge(
                "linepulse_ingest_mqtt_inbox_messages",
                "MQTT messages received and waiting to be decoded (read at scrape time)",
                ("source",),
            ),
            mqtt_inbox_dropped=counter(
                "linepulse_ingest_mqtt_inbox_dropped",
                "QoS 0 MQTT messages dropped because max_inbox_messages were waiting "
                "(QoS 1 and 2 wait at the broker instead)",
                ("source",),
            ),
            buffer_samples=gauge(
                "linepulse_ingest_buffer_samples", "Samples waiting in memory for Kafka"
            ),
            spool_bytes=gauge(
                "linepulse_ingest_spool_bytes", "Bytes waiting in the disk spool for Kafka"
            ),
            backpressure=gauge(
                "linepulse_ingest_backpressure", "1 while the spool is full and ingesters wait"
            ),
            backpressure_seconds=counter(
                "linepulse_ingest_backpressure_seconds",
                "Time ingesters spent waiting on a full spool",
            ),
            sent=counter("linepulse_ingest_sent", "Samples acknowledged by Kafka"),
            kafka_up=gauge("linepulse_ingest_kafka_up", "1 while sends to Kafka succeed"),
        )
