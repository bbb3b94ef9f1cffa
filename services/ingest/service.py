"""The ingest service as a component: every configured source into Kafka, with /metrics.

One task per source (an OPC-UA endpoint or an MQTT broker) and one Kafka sink they all
hand their batches to. `open_ingest` opens the sink and closes it on the way out, after
the ingesters have flushed: it sends what it holds, or spools it to disk for the next
start. A source that fails keeps retrying on its own (its ingester's backoff); the
composition root runs the tasks until it is told to stop (linepulse/runtime.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from linepulse.bus import KafkaClients
from linepulse.config import PlantConfig
from linepulse.http.api import metrics_response
from linepulse.runtime import HttpSettings, Served, Task
from services.ingest.metrics import IngestMetrics
from services.ingest.mqtt import MqttIngester
from services.ingest.opcua import OpcuaIngester
from services.ingest.samples import Sink
from services.ingest.spooled_sink import SpooledSink

log = logging.getLogger(__name__)


def create_app(plant: PlantConfig, sink: SpooledSink, registry: CollectorRegistry) -> FastAPI:
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


def ingesters(plant: PlantConfig, sink: Sink, metrics: IngestMetrics) -> tuple[Task, ...]:
    """A task per configured source, handing its batches to `sink` (whoever opened it
    closes it, after these tasks have returned)."""
    tasks = [
        Task(f"opcua:{source.id}", OpcuaIngester(source, plant, sink, metrics).run)
        for source in plant.sources.opcua
    ]
    tasks += [
        Task(f"mqtt:{source.id}", MqttIngester(source, plant, sink, metrics).run)
        for source in plant.sources.mqtt
    ]
    return tuple(tasks)


@dataclass(frozen=True)
class IngestServiceSettings:
    plant: PlantConfig  # its sources; `ingest:` sets the batches and the spool
    bootstrap: str
    http: HttpSettings | None  # where /metrics and /healthz listen; None: nowhere


@dataclass(frozen=True)
class Ingest:
    """An opened ingest service: a task per source, and /metrics and /healthz."""

    tasks: tuple[Task, ...]
    served: tuple[Served, ...]
    sink: SpooledSink

    async def wait_for_start(self, stop: asyncio.Event) -> bool:
        """Nothing to wait for: while Kafka is away the sink spools."""
        return True


@contextlib.asynccontextmanager
async def open_ingest(
    settings: IngestServiceSettings, clients: KafkaClients, registry: CollectorRegistry
) -> AsyncIterator[Ingest]:
    """The sources of `settings.plant` onto its telemetry topic through one sink, with
    the metrics in `registry`. `clients` are the bus's: the sink's producer comes from them."""
    plant, bootstrap, http = settings.plant, settings.bootstrap, settings.http
    # While Kafka is away aiokafka logs an ERROR a second per connection attempt; the sink
    # logs the outage itself (lost, still away with how much is waiting, back).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    metrics = IngestMetrics.create(registry)
    sink = SpooledSink(plant, bootstrap, plant.ingest, metrics, clients=clients)
    await sink.start()
    try:
        log.info("ingest: spool in %s (used while Kafka is away)", plant.ingest.spool_dir)
        for opcua in plant.sources.opcua:
            log.info(
                "source %s: OPC-UA %s, %d machines", opcua.id, opcua.endpoint, len(opcua.machines)
            )
        for mqtt in plant.sources.mqtt:
            log.info("source %s: MQTT %s:%d", mqtt.id, mqtt.host, mqtt.port)
        served: tuple[Served, ...] = ()
        if http is not None:
            served = (Served("ingest-http", create_app(plant, sink, registry), http),)
            log.info("ingest: %s://%s:%d/metrics and /healthz", http.scheme, http.host, http.port)
        yield Ingest(ingesters(plant, sink, metrics), served, sink)
    finally:
        await sink.close()
    log.info("ingest stopped")
