"""`linepulse ingest` as a process: every configured source into Kafka, with /metrics.

One task per source (an OPC-UA endpoint or an MQTT broker) and one Kafka sink they all
hand their batches to. A source that fails keeps retrying on its own (its ingester's
backoff); the process only ends on SIGTERM/SIGINT, after the ingesters have flushed and
the sink has sent what it holds, or spooled it to disk for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from linepulse.config import PlantConfig
from linepulse.http.api import metrics_response
from linepulse.runtime import HttpSettings, install_stop_signals, serve_http
from services.ingest.kafka_sink import KafkaSink
from services.ingest.metrics import IngestMetrics
from services.ingest.mqtt import MqttIngester
from services.ingest.opcua import OpcuaIngester

log = logging.getLogger(__name__)


def create_app(plant: PlantConfig, sink: KafkaSink, registry: CollectorRegistry) -> FastAPI:
    """/metrics for Prometheus and /healthz: the process is up, and what it is waiting on."""
    app = FastAPI(title="LinePulse ingest", version="0.1.0")
    metrics_registry = registry

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return metrics_response(metrics_registry)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        body: dict[str, Any] = {
            "status": "ok",
            "kafka_up": sink.kafka_up,
            "buffered_samples": sink.buffered_samples,
            "spool_bytes": sink.spool_bytes,
            "sources": plant.sources.ids(),
        }
        return JSONResponse(body)

    return app


async def run_ingest(plant: PlantConfig, bootstrap: str, http: HttpSettings | None) -> int:
    """Run every configured source until SIGTERM/SIGINT; 0 on a clean stop."""
    if not plant.sources.opcua and not plant.sources.mqtt:
        log.error("the plant config has no sources (sources.opcua, sources.mqtt): nothing to read")
        return 2
    stop = asyncio.Event()
    install_stop_signals(stop, "stopping (flush the ingesters, send or spool what is held)")
    # While Kafka is away aiokafka logs an ERROR a second per connection attempt; the sink
    # logs the outage itself (lost, still away with how much is waiting, back).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    registry = CollectorRegistry()
    metrics = IngestMetrics.create(registry)
    sink = KafkaSink(plant, bootstrap, plant.ingest, metrics)
    await sink.start()
    log.info("ingest: spool in %s (used while Kafka is away)", plant.ingest.spool_dir)
    try:
        async with asyncio.TaskGroup() as group:
            for opcua in plant.sources.opcua:
                ingester = OpcuaIngester(opcua, plant, sink, metrics)
                group.create_task(ingester.run(stop), name=f"opcua:{opcua.id}")
                log.info(
                    "source %s: OPC-UA %s, %d machines",
                    opcua.id,
                    opcua.endpoint,
                    len(opcua.machines),
                )
            for mqtt in plant.sources.mqtt:
                mqtt_ingester = MqttIngester(mqtt, plant, sink, metrics)
                group.create_task(mqtt_ingester.run(stop), name=f"mqtt:{mqtt.id}")
                log.info("source %s: MQTT %s:%d", mqtt.id, mqtt.host, mqtt.port)
            if http is not None:
                app = create_app(plant, sink, registry)
                serve_http(group, stop, app, http.host, http.port, "ingest-http", tls=http.tls)
                log.info(
                    "ingest: %s://%s:%d/metrics and /healthz", http.scheme, http.host, http.port
                )
    finally:
        await sink.close()
    log.info("ingest stopped")
    return 0
