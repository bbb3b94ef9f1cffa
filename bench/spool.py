"""Spool benchmark: the disk spool alone, and `SpooledSink` through a broker outage.

    python -m bench.spool                  # 10,000 samples/s for 60 s with the broker stopped
    python -m bench.spool --seconds 600    # the full proof: 10 minutes, 6,000,000 samples
    python -m bench.spool --quick          # under a minute: 15 s outage, smaller runs

It starts its own broker (deploy/kafka/kafka.sh through bench.stream's `Broker`, free
loopback ports, data in a temporary folder) and always stops it, also on Ctrl-C. Samples
are bench/generate.py's plant (1,000 machines, 10 signals a second each: state, counters,
analog tags), with `ts` replaced by the sample's put number so that loss and duplicates
are one column to count. Printed, in order:

1. **spool alone**: encode + append, then read + decode + acknowledge, samples/s; bytes a
   sample on disk.
2. **baseline**: a plain aiokafka loop (idempotent, gzip, Arrow records of 5,000 samples on
   each line's home partition), the same samples, the broker up.
3. **sink, broker up**: `SpooledSink.put` as fast as it takes them until all are acknowledged.
4. **outage**: `--rate` samples/s into a `SpooledSink` with default settings; the broker is
   stopped for `--seconds`, started again, and the feed goes on until the spool is
   drained. Then the topic is read back: lost and duplicated samples, spool peak, memory
   peak (the process's RSS high-water mark), catch-up time.

Nothing is asserted: the figures are printed and the exit code is 0 unless the benchmark
itself cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import shutil
import time
from pathlib import Path
from typing import Final

import polars as pl
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from bench.generate import event_frame, plant_yaml
from bench.harness import Broker, broker_session
from linepulse.bus.partitions import HomePartitions
from linepulse.bus.topics import ensure_topics
from linepulse.config import PlantConfig, parse_config
from linepulse.events import normalize_frame
from linepulse.sources import IngestSettings
from linepulse.wire import ARROW, decode_records, encode_arrow
from services.ingest.metrics import IngestMetrics
from services.ingest.spool import Kind, Spool, decode_samples, encode_samples
from services.ingest.spooled_sink import COMPRESSION, SpooledSink

MACHINES: Final = 1_000
RECORD_SAMPLES: Final = 5_000
SPOOL_ENTRY: Final = 50_000
TICK_S: Final = 0.1
PRE_OUTAGE_S: Final = 5.0
BASE_ROWS: Final = 1_000_000  # generated once, cycled with fresh `ts` numbers
QUICK_BASE_ROWS: Final = 200_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.spool", description=__doc__)
    parser.add_argument("--rate", type=int, default=10_000, help="samples/s during the outage")
    parser.add_argument("--seconds", type=float, default=60.0, help="outage length")
    parser.add_argument("--samples", type=int, default=2_000_000, help="spool and baseline runs")
    parser.add_argument("--quick", action="store_true", help="15 s outage, 300,000 samples")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 15.0)
        args.samples = min(args.samples, 300_000)
    return args


class Workload:
    """Generated plant samples, handed out in order with `ts` = put number."""

    def __init__(self, rows: int, seed: int) -> None:
        raw = event_frame(MACHINES, rows, seed)
        self.base = normalize_frame(raw).events
        self.next = 0

    def take(self, count: int) -> pl.DataFrame:
        parts = []
        while count:
            offset = self.next % self.base.height
            part = self.base.slice(offset, min(count, self.base.height - offset))
            first = self.next
            parts.append(part.with_columns(ts=pl.int_range(first, first + part.height)))
            self.next += part.height
            count -= part.height
        return pl.concat(parts)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f} samples/s" if seconds > 0 else "n/a"


# -- 1. the spool alone ---------------------------------------------------------------------


def bench_spool(work: Workload, samples: int, folder: Path) -> float:
    frames = [work.take(min(SPOOL_ENTRY, samples - n)) for n in range(0, samples, SPOOL_ENTRY)]
    spool = Spool(folder, max_bytes=64 * 1024**3)
    started = time.perf_counter()
    for seq, frame in enumerate(frames):
        spool.append(Kind.SAMPLES, seq, frame.height, encode_samples(frame))
    spool.close()
    write_s = time.perf_counter() - started
    size = spool.size_bytes
    started = time.perf_counter()
    again = Spool(folder, max_bytes=64 * 1024**3)
    recover_s = time.perf_counter() - started
    started = time.perf_counter()
    read = 0
    while (entry := again.next_unread()) is not None:
        read += decode_samples(entry.payload).height
        again.ack(entry)
    drain_s = time.perf_counter() - started
    per_sample = size / samples
    print(
        f"spool alone: {samples:,} samples in entries of {SPOOL_ENTRY:,}: write "
        f"{rate(samples, write_s)} (encode zstd + append + fsync per segment), recovery scan "
        f"{recover_s:.2f} s, read+decode+ack {rate(read, drain_s)}; {per_sample:.2f} bytes "
        f"a sample on disk"
    )
    return per_sample


# -- 2. a plain aiokafka loop -------------------------------------------------------------


async def bench_baseline(plant: PlantConfig, bootstrap: str, work: Workload, samples: int) -> None:
    frames = [work.take(min(RECORD_SAMPLES * 6, samples - n)) for n in range(0, samples, 30_000)]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        compression_type=COMPRESSION,
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    try:
        homes = HomePartitions(
            plant, len(await producer.partitions_for(plant.kafka.telemetry.name))
        )
        started = time.perf_counter()
        for frame in frames:
            sends = []
            for home, group in homes.split(frame).items():
                for offset in range(0, group.height, RECORD_SAMPLES):
                    chunk = group.slice(offset, RECORD_SAMPLES)
                    sends.append(
                        await producer.send(
                            plant.kafka.telemetry.name,
                            value=encode_arrow(chunk),
                            key=chunk.item(0, "machine").encode(),
                            partition=home or 0,
                            headers=[("content-type", ARROW.encode())],
                        )
                    )
            await asyncio.gather(*sends)
        took = time.perf_counter() - started
    finally:
        await producer.stop()
    print(f"baseline, plain aiokafka loop, broker up: {samples:,} samples, {rate(samples, took)}")


# -- 3. the sink with the broker up -------------------------------------------------------


async def bench_sink_up(
    plant: PlantConfig, bootstrap: str, work: Workload, samples: int, folder: Path
) -> None:
    metrics = IngestMetrics.create(CollectorRegistry())
    sink = SpooledSink(plant, bootstrap, IngestSettings(spool_dir=folder), metrics)
    await sink.start()
    started = time.perf_counter()
    for n in range(0, samples, 1_000):
        await sink.put(work.take(min(1_000, samples - n)))
    await sink.close(timeout_s=300)  # returns once everything is acknowledged
    took = time.perf_counter() - started
    print(
        f"SpooledSink, broker up: {samples:,} samples put 1,000 at a time, "
        f"{sink.sent_samples:,} acknowledged at close: {rate(sink.sent_samples, took)}"
    )


# -- 4. the outage --------------------------------------------------------------------------


async def bench_outage(
    plant: PlantConfig, broker: Broker, work: Workload, args: argparse.Namespace, folder: Path
) -> None:
    settings = IngestSettings(spool_dir=folder)
    sink = SpooledSink(plant, broker.bootstrap, settings, IngestMetrics.create(CollectorRegistry()))
    await sink.start()
    first = work.next
    fed = 0
    started = time.monotonic()
    peak = {"spool_bytes": 0, "spooled": 0, "memory": 0, "backpressure_s": 0.0}

    async def feed(until: float) -> None:
        nonlocal fed
        while time.monotonic() < until:
            due = int((time.monotonic() - started) * args.rate) - fed
            if due > 0:
                before = time.monotonic()
                await sink.put(work.take(due))
                if sink.backpressure or time.monotonic() - before > TICK_S:
                    peak["backpressure_s"] += time.monotonic() - before
                fed += due
            peak["spool_bytes"] = max(peak["spool_bytes"], sink.spool_bytes)
            peak["spooled"] = max(peak["spooled"], sink.spooled_samples)
            peak["memory"] = max(peak["memory"], sink.buffered_samples)
            await asyncio.sleep(TICK_S)

    await feed(time.monotonic() + PRE_OUTAGE_S)
    await asyncio.to_thread(broker.stop)
    down_at = time.monotonic()
    print(
        f"outage: broker stopped; feeding {args.rate:,} samples/s for {args.seconds:g} s",
        flush=True,
    )
    await feed(down_at + args.seconds)
    in_outage = fed - int((down_at - started) * args.rate)
    starting = asyncio.create_task(asyncio.to_thread(broker.start))
    while not starting.done():
        await feed(time.monotonic() + 1)
    starting.result()
    back_at = time.monotonic()
    limit = back_at + max(120.0, 10 * args.seconds)
    while (sink.spooled_samples or sink.buffered_samples > 2 * args.rate) and (
        time.monotonic() < limit
    ):
        await feed(time.monotonic() + 1)
    caught_up = time.monotonic() - back_at
    await sink.close(timeout_s=300)
    print(
        f"outage: {args.seconds:g} s down ({in_outage:,} samples fed while away), broker "
        f"restart took {back_at - down_at - args.seconds:.1f} s; caught up "
        f"{caught_up:.1f} s after it answered; {fed:,} samples in all"
    )
    print(
        f"outage: spool peak {peak['spool_bytes'] / 1024**2:,.1f} MiB for "
        f"{peak['spooled']:,} samples ({peak['spool_bytes'] / max(1, peak['spooled']):.2f} "
        f"bytes a sample); memory buffer peak {peak['memory']:,} samples; put held "
        f"{peak['backpressure_s']:.1f} s in all; process RSS peak {peak_rss_mib():,.0f} MiB"
    )
    seen, rows = await read_back(broker.bootstrap, plant)
    expected = set(range(first, first + fed))
    lost = len(expected - seen)
    print(
        f"outage: read back {rows:,} samples: lost: {lost}, duplicates: {rows - len(seen)}, "
        f"unexpected: {len(seen - expected)}"
    )


async def read_back(bootstrap: str, plant: PlantConfig) -> tuple[set[int], int]:
    topic = plant.kafka.telemetry.name
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20
    )
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(plant.kafka.telemetry.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        seen: set[int] = set()
        rows = 0
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                decoded = decode_records((r.value, r.headers, r.offset) for r in records)
                stamps = decoded.events["ts"]
                rows += stamps.len()
                seen.update(stamps.to_list())
        return seen, rows
    finally:
        await consumer.stop()


# -- running it ----------------------------------------------------------------------------


async def measure(args: argparse.Namespace, broker: Broker, tmp: Path) -> None:
    data = yaml.safe_load(plant_yaml(MACHINES))
    data["kafka"] = {"dlq": {"name": "telemetry.dlq", "partitions": 1}}
    plant = parse_config(data)
    work = Workload(QUICK_BASE_ROWS if args.quick else BASE_ROWS, args.seed)
    per_sample = bench_spool(work, args.samples, tmp / "spool-alone")
    shutil.rmtree(tmp / "spool-alone", ignore_errors=True)
    ten_minutes = 600 * args.rate
    print(
        f"disk for a 10-minute outage at {args.rate:,} samples/s: {ten_minutes:,} samples x "
        f"{per_sample:.2f} B = {ten_minutes * per_sample / 1024**2:,.0f} MiB (default "
        f"spool_max_bytes {IngestSettings().spool_max_bytes / 1024**3:.0f} GiB)",
        flush=True,
    )
    await ensure_topics(broker.bootstrap, plant.kafka)
    await bench_baseline(plant, broker.bootstrap, work, args.samples)
    await bench_sink_up(plant, broker.bootstrap, work, args.samples, tmp / "spool-up")
    # The outage run reads its own samples back: a fresh topic set.
    data["kafka"] = {
        "telemetry": {"name": "outage-telemetry"},
        "dlq": {"name": "outage-dlq", "partitions": 1},
    }
    await bench_outage(parse_config(data), broker, work, args, tmp / "spool-outage")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # a connect error a second
    logging.getLogger("services.ingest").setLevel(logging.INFO)
    with broker_session("bench.spool", "linepulse-spool-") as (broker, tmp):
        asyncio.run(measure(args, broker, tmp))


if __name__ == "__main__":
    main()
