"""Running equipment software nobody on LinePulse wrote, and `linepulse ingest` against it.

The Node.js programs beside this file (`opcua_server.mjs`, a node-opcua server, and
`sparkplug_edge.mjs`, an Eclipse Tahu sparkplug-client edge node) each publish a schedule
the test writes, print `ready`, `started <t0>` and `done` lines, and stop on SIGTERM.
`.ci/run` installs their packages (`npm ci` here, from the committed package-lock.json);
a test fails, naming that command, when they are missing.

The ingester runs as a user runs it, `linepulse ingest --config plant.yaml` in a child
process, and what it wrote is read back from the telemetry topic with the project's own
decoder (`linepulse.wire.decode_records`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from linepulse.wire import decode_records
from tests.cli_command import LINEPULSE

HERE = Path(__file__).parent
NODE_MODULES = HERE / "node_modules"
READY_TIMEOUT_S = 60.0  # node-opcua makes its certificate on a first start (~5 s)
STOP_TIMEOUT_S = 15.0


def require_node() -> str:
    """The `node` binary, with the packages installed; fails naming the fix otherwise."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "the foreign-equipment tests need Node.js (Debian: apt-get install nodejs npm); "
            "CI installs it: see .ci/run",
            pytrace=False,
        )
    if not NODE_MODULES.is_dir():
        pytest.fail(
            f"the foreign-equipment tests need their npm packages: run `npm ci` in {HERE} "
            "(CI does, see .ci/run)",
            pytrace=False,
        )
    return node


async def terminate(proc: asyncio.subprocess.Process | None, timeout_s: float) -> int | None:
    """SIGTERM a child we started, and its exit code; killed after `timeout_s`: None."""
    if proc is None:
        return None
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
    return proc.returncode


@dataclass
class NodeProgram:
    """One of the Node.js programs as a child process, its stdout lines collected."""

    script: str
    args: list[str]
    log: Path
    lines: list[str] = field(default_factory=list)
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        node = require_node()
        with self.log.open("ab") as err:
            self._proc = await asyncio.create_subprocess_exec(
                node,
                str(HERE / self.script),
                *self.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=HERE,
            )
        self._reader = asyncio.create_task(self._read(), name=f"stdout-{self.script}")

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        while line := await self._proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.lines.append(text)
            with self.log.open("a") as out:
                out.write(f"stdout: {text}\n")
            self._changed.set()
        self._changed.set()

    async def line(self, prefix: str, timeout_s: float = READY_TIMEOUT_S) -> str:
        """The rest of the first stdout line that starts with `prefix` (waits for it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            for text in self.lines:
                if text.startswith(prefix):
                    return text[len(prefix) :].strip()
            if self._proc is not None and self._proc.returncode is not None:
                pytest.fail(
                    f"{self.script} exited with {self._proc.returncode} before printing "
                    f"{prefix!r}:\n{self.log.read_text(errors='replace')[-3000:]}",
                    pytrace=False,
                )
            left = deadline - loop.time()
            if left <= 0:
                pytest.fail(
                    f"{self.script} printed no {prefix!r} line within {timeout_s:.0f} s:\n"
                    f"{self.log.read_text(errors='replace')[-3000:]}",
                    pytrace=False,
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))

    async def send(self, text: str) -> None:
        assert self._proc is not None
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"{text}\n".encode())
        await self._proc.stdin.drain()

    async def stop(self) -> int | None:
        """SIGTERM, and the exit code (killed after STOP_TIMEOUT_S: None)."""
        code = await terminate(self._proc, STOP_TIMEOUT_S)
        if self._proc is not None and self._reader is not None:
            await self._reader
        return code


@contextlib.asynccontextmanager
async def running(program: NodeProgram) -> AsyncIterator[NodeProgram]:
    await program.start()
    try:
        yield program
    finally:
        await program.stop()


@dataclass
class Ingest:
    """`linepulse ingest` as a child process, with its /metrics on `port`."""

    config: Path
    log: Path
    port: int
    _proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                *LINEPULSE,
                "--log-level",
                "info",
                "ingest",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """The ingester's /metrics: (sample name, labels) -> value."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
        response.raise_for_status()
        out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                out[sample.name, frozenset(sample.labels.items())] = sample.value
        return out

    async def wait_connected(self, source: str, timeout_s: float = 60.0) -> None:
        """Until /metrics says `source` is connected (the process is up and subscribed)."""
        key = ("linepulse_ingest_connected", frozenset({("source", source)}))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                pytest.fail(f"linepulse ingest exited with {self._proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.metrics()).get(key) == 1.0:
                    return
            await asyncio.sleep(0.2)
        pytest.fail(f"source {source} not connected within {timeout_s:.0f} s:\n{self.tail()}")

    async def stop(self) -> int | None:
        """SIGTERM, and the exit code (killed after a minute: None)."""
        return await terminate(self._proc, 60)

    async def kill(self) -> None:
        """SIGKILL, as a crash: no flush, no goodbye."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextlib.asynccontextmanager
async def ingesting(ingest: Ingest) -> AsyncIterator[Ingest]:
    await ingest.start()
    try:
        yield ingest
    finally:
        await ingest.stop()


def plant_config(
    tmp: Path,
    bootstrap: str,
    machines: list[str],
    sources: dict[str, Any],
    ingest: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """A plant of one line with `machines` and `sources`, on topics of this test's own, its
    ingest state under `tmp` (`ingest`: more ingest settings). Returns the config file and
    the telemetry topic."""
    tag = uuid.uuid4().hex[:8]
    telemetry = f"telemetry-{tag}"
    data = {
        "site": "foreign",
        "timezone": "UTC",
        "lines": [{"id": "line-1", "machines": [{"id": m} for m in machines]}],
        "sources": sources,
        "kafka": {
            "bootstrap": bootstrap,
            "telemetry": {"name": telemetry, "partitions": 3},
            "kpi": {"name": f"kpi-{tag}", "partitions": 3},
            "dlq": {"name": f"dlq-{tag}", "partitions": 1},
            "status": {"name": f"status-{tag}", "partitions": 1},
        },
        "ingest": {
            "spool_dir": str(tmp / "spool"),
            "state_dir": str(tmp / "state"),
            **(ingest or {}),
        },
    }
    config = tmp / "plant.yaml"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config, telemetry


@dataclass(frozen=True)
class Seen:
    """One telemetry event as read back: the reading with the Python type it has."""

    ts: int
    machine: str
    signal: str
    value: object
    quality: str

    @property
    def kind(self) -> str:
        return type(self.value).__name__


def reading(row: dict[str, Any]) -> object:
    """The reading of an EVENT_SCHEMA row, typed as the row's columns say: text from
    `value_str`, an integer from `value_int` (where the schema has that column), a float
    from `value_num`."""
    if row.get("value_str") is not None:
        return row["value_str"]
    if row.get("value_int") is not None:
        return row["value_int"]
    return row.get("value_num")


async def read_until(
    bootstrap: str,
    topic: str,
    done: Callable[[list[Seen]], bool],
    timeout_s: float = 40.0,
) -> list[Seen]:
    """Telemetry events from the start of `topic` until `done(events)` holds or
    `timeout_s` passes (then whatever arrived, for the assertions to name what is missing).
    Records the decoder refuses fail the test: the ingester must write only good ones."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[Seen] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and not done(seen):
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                decoded = decode_records(
                    ((m.value, m.headers, m.offset) for m in messages), tp.topic
                )
                assert decoded.rejected == [], decoded.rejected[:3]
                for row in decoded.events.iter_rows(named=True):
                    seen.append(
                        Seen(row["ts"], row["machine"], row["signal"], reading(row), row["quality"])
                    )
    finally:
        await consumer.stop()
    return seen
