"""A small OPC-UA server the ingester tests control: a real asyncua `Server` on a loopback port.

It plays a PLC: machines are folders under `Objects/Plant`, each signal a variable with
the string NodeId `<machine>.<Name>` in namespace 2 (`ns=2;s=press-1.State`) and the
browse path `2:Plant/2:<machine>/2:<Name>`. Tests write values with the SourceTimestamp
and StatusCode they choose, as a PLC stamps its own readings, and can stop the server
and start a new instance on the same port (a PLC reboot: the new instance knows
nothing of the old one's sessions and subscriptions).

Security is optional: `ServerSecurity` makes the server accept only Basic256Sha256
SignAndEncrypt and users from a name -> password table, the setup the issue's security
test asks for. `make_certificate` writes self-signed certificates with the application URI
in SubjectAltName, as OPC UA Part 6 §6.2.2 and asyncua require.

Run as a script it measures the ingester's throughput against a fast writer in another
process (figures printed, not asserted):

    python -m tests.integration.opcua_server bench [NODES SECONDS PUBLISHING_MS QUEUE_SIZE]
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from asyncua import ua
from asyncua.crypto import cert_gen
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.monitored_item_service import MonitoredItemValues
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

NAMESPACE = "urn:linepulse:test-plc"
SERVER_URI = "urn:linepulse:test-plc:server"
CLIENT_URI = "urn:linepulse:ingest:test-client"
PLANT = "Plant"


def make_certificate(folder: Path, name: str, uri: str, *, server: bool) -> tuple[Path, Path]:
    """A self-signed certificate and its private key (PEM) for an OPC-UA application.

    The application URI goes into SubjectAltName (Part 6 §6.2.2): asyncua checks it
    against the client's `application_uri`, servers check it against the session's."""
    key = cert_gen.generate_private_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "LinePulse tests"},
        [
            x509.UniformResourceIdentifier(uri),
            x509.DNSName("localhost"),
            x509.DNSName(socket.gethostname()),
        ],
        [usage],
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_path = folder / f"{name}.pem"
    key_path = folder / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


class PasswordUsers(UserManager):
    """An asyncua user manager over a name -> password table; everyone else is refused."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is not None and self.users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


@dataclass(frozen=True)
class ServerSecurity:
    """SignAndEncrypt with Basic256Sha256 only, and username/password users only."""

    certificate: Path
    private_key: Path
    users: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Variable:
    """One signal of a machine as the server exposes it."""

    name: str  # browse name under the machine's folder, e.g. "State"
    value: object
    variant: ua.VariantType


class PlcServer:
    """One asyncua server instance; `stop()` then a new `PlcServer` on the same port is a
    PLC reboot."""

    def __init__(self, port: int, security: ServerSecurity | None = None) -> None:
        self.port = port
        self.security = security
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/plc/"
        self._server: Server | None = None
        self.ns = 2
        self.nodes: dict[str, ua.NodeId] = {}  # "press-1.State" -> NodeId

    @property
    def server(self) -> Server:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return self._server

    async def start(self, machines: Mapping[str, list[Variable]]) -> None:
        """Build the address space and listen. Machines are `{machine: [Variable, ...]}`."""
        users = PasswordUsers(self.security.users) if self.security is not None else None
        server = Server(user_manager=users)
        await server.init()
        server.set_endpoint(self.endpoint)
        await server.set_application_uri(SERVER_URI)
        server.set_server_name("LinePulse test PLC")
        if self.security is not None:
            await server.load_certificate(str(self.security.certificate))
            await server.load_private_key(str(self.security.private_key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            server.set_identity_tokens([ua.UserNameIdentityToken])
        self.ns = await server.register_namespace(NAMESPACE)
        plant = await server.nodes.objects.add_folder(self.node_id(PLANT), self.name(PLANT))
        for machine, variables in machines.items():
            folder = await plant.add_folder(self.node_id(machine), self.name(machine))
            for var in variables:
                key = f"{machine}.{var.name}"
                node = await folder.add_variable(
                    self.node_id(key), self.name(var.name), ua.Variant(var.value, var.variant)
                )
                self.nodes[key] = node.nodeid
        await server.start()
        self._server = server

    def node_id(self, key: str) -> ua.NodeId:
        return ua.NodeId(ua.String(key), ua.Int16(self.ns))

    def name(self, text: str) -> ua.QualifiedName:
        return ua.QualifiedName(Name=text, NamespaceIndex=self.ns)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def historize(self, *keys: str) -> None:
        """Keep the history of these variables (asyncua's in-memory store, no limit), as
        a PLC's Historizing variables are: HistoryRead then returns their past values."""
        for key in keys:
            node = self.server.get_node(self.nodes[key])
            await self.server.historize_node_data_change(node, period=timedelta(days=1), count=0)

    async def write(
        self,
        key: str,
        value: object,
        variant: ua.VariantType,
        ts: datetime | None = None,
        status: int = StatusCodes.Good,
    ) -> None:
        """Set a variable as a PLC would: value, its own SourceTimestamp, a StatusCode."""
        await self.server.write_attribute_value(
            self.nodes[key], data_value(value, variant, ts, status)
        )


def data_value(
    value: object,
    variant: ua.VariantType,
    ts: datetime | None = None,
    status: int = StatusCodes.Good,
) -> ua.DataValue:
    """A DataValue with the given SourceTimestamp and StatusCode, served now."""
    return ua.DataValue(
        Value=ua.Variant(value, variant),
        StatusCode=ua.StatusCode(ua.UInt32(status)),
        # asyncua types timestamps as its DateTime subclass; it encodes any datetime.
        SourceTimestamp=cast(ua.DateTime | None, ts),
        ServerTimestamp=cast(ua.DateTime, datetime.now(UTC)),
    )


def machine_variables(analog: float = 20.0) -> list[Variable]:
    """The signals every test machine has: a PLC enum state, a counter, an analog tag."""
    return [
        Variable("State", 0, ua.VariantType.Int32),
        Variable("TotalCount", 0, ua.VariantType.UInt32),
        Variable("Temperature", analog, ua.VariantType.Double),
        Variable("Product", "sku-a", ua.VariantType.String),
    ]


# -- the throughput figure: `python -m tests.integration.opcua_server bench` ----------------
#
# The writer runs in its own process (a PLC is another machine; sharing one event loop
# would measure the two halves against each other). It serves NODES Double variables and,
# on "GO" from stdin, rewrites all of them as fast as it can for SECONDS, every value new,
# then prints how many it wrote. The ingester under test counts what reaches its sink.

PER_MACHINE = 10


def _skip_server_copies() -> None:
    """asyncua's server deep-copies every DataValue once per monitored item it notifies
    (`MonitoredItemValues.set_current_datavalue`): about 80 % of its time, capping it near
    5,000 changes/s with one subscriber on these machines. This writer never mutates a
    DataValue after writing it, so the copy can go; only the load generator does this."""

    def keep(values: MonitoredItemValues, value: ua.DataValue) -> None:
        values.old_dvalue = values.current_dvalue
        values.current_dvalue = value

    MonitoredItemValues.set_current_datavalue = keep  # type: ignore[method-assign,assignment]


async def serve_fast(port: int, nodes: int, seconds: float, copies: bool) -> None:
    if not copies:
        _skip_server_copies()
    machines = {
        f"m{i:03d}": [Variable(f"V{j}", 0.0, ua.VariantType.Double) for j in range(PER_MACHINE)]
        for i in range(nodes // PER_MACHINE)
    }
    plc = PlcServer(port)
    await plc.start(machines)
    ids = list(plc.nodes.values())
    print("READY", flush=True)  # noqa: T201 - the parent waits for this line
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    server, written, value = plc.server, 0, 0.0
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        value += 1.0
        # One DataValue per round, shared by all nodes: every node gets a new value.
        round_value = data_value(value, ua.VariantType.Double, datetime.now(UTC))
        for node_id in ids:
            await server.write_attribute_value(node_id, round_value)
        written += len(ids)
        await asyncio.sleep(0)  # let the server publish
    elapsed = time.monotonic() - began
    print(f"WRITES {written} {elapsed:.3f}", flush=True)  # noqa: T201
    await loop.run_in_executor(None, sys.stdin.readline)  # serve until told to stop
    await plc.stop()


class _CountingSink:
    def __init__(self) -> None:
        self.samples = 0
        self.puts = 0
        self.last = time.monotonic()

    async def put(self, events: Any) -> None:
        # The baseline read and first notifications carry the initial 0.0s.
        self.samples += int((events["value_num"] > 0).sum())
        self.puts += 1
        self.last = time.monotonic()

    async def dead_letter(self, letters: Any) -> None:
        raise AssertionError(f"unexpected dead letters: {letters[:3]}")

    def position(self) -> int:
        return self.puts - 1

    async def kept(self, position: int) -> None:
        """Counted is kept."""


async def bench(
    nodes: int, seconds: float, publishing_ms: int, queue_size: int, copies: bool
) -> None:
    from prometheus_client import CollectorRegistry

    from linepulse.config import parse_config
    from services.ingest.metrics import IngestMetrics
    from services.ingest.opcua import OpcuaIngester

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.opcua_server",
        "serve",
        str(port),
        str(nodes),
        str(seconds),
        "copies" if copies else "no-copies",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert writer.stdout is not None
    assert writer.stdin is not None
    if (await writer.stdout.readline()).strip() != b"READY":
        raise RuntimeError("the writer did not start")
    machines = [f"m{i:03d}" for i in range(nodes // PER_MACHINE)]
    config = parse_config(
        {
            "site": "bench",
            "lines": [{"id": "l", "machines": [{"id": m} for m in machines]}],
            "ingest": {"state_dir": tempfile.mkdtemp(prefix="lp-opcua-bench-")},
            "sources": {
                "opcua": [
                    {
                        "id": "plc",
                        "endpoint": f"opc.tcp://127.0.0.1:{port}/plc/",
                        "publishing_interval_ms": publishing_ms,
                        "sampling_interval_ms": 0,
                        "queue_size": queue_size,
                        "machines": [
                            {
                                "machine": m,
                                "nodes": {f"v{j}": f"ns=2;s={m}.V{j}" for j in range(PER_MACHINE)},
                            }
                            for m in machines
                        ],
                    }
                ]
            },
        }
    )
    sink = _CountingSink()
    ingester = OpcuaIngester(
        config.sources.opcua[0], config, sink, IngestMetrics.create(CollectorRegistry())
    )
    stop = asyncio.Event()
    task = asyncio.create_task(ingester.run(stop), name="bench-ingester")
    while not ingester.connected:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    cpu0, began = time.process_time(), time.monotonic()
    writer.stdin.write(b"GO\n")
    line = (await writer.stdout.readline()).split()
    written, write_s = int(line[1]), float(line[2])
    while time.monotonic() - sink.last < 2.0 and sink.samples < written:
        await asyncio.sleep(0.1)
    took = sink.last - began
    cpu = time.process_time() - cpu0
    writer.stdin.write(b"STOP\n")
    stop.set()
    await task
    await writer.wait()
    print(  # noqa: T201
        f"nodes={nodes} publishing={publishing_ms}ms queue={queue_size} "
        f"server {'stock' if copies else 'without DataValue copies'}: server wrote "
        f"{written} values in {write_s:.1f} s = {written / write_s:,.0f}/s; ingester took "
        f"{sink.samples} = {100 * sink.samples / written:.1f} % in {took:.1f} s = "
        f"{sink.samples / took:,.0f}/s ({sink.puts} sink puts, ingester CPU {cpu:.1f} s)"
    )


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        run = serve_fast(int(args[1]), int(args[2]), float(args[3]), args[4] == "copies")
        profile = os.environ.get("OPCUA_SERVE_PROFILE")  # a cProfile output file
        if profile:
            import cProfile

            cProfile.runctx("asyncio.run(run)", globals(), {"run": run}, profile)
        else:
            asyncio.run(run)
    elif args[:1] == ["bench"]:
        copies = "--stock-server" in args
        given = [a for a in args[1:] if not a.startswith("--")][:4]
        defaults = ["200", "10", "100", "1000"]
        nodes, seconds, publishing, queue = given + defaults[len(given) :]
        asyncio.run(bench(int(nodes), float(seconds), int(publishing), int(queue), copies))
    else:
        raise SystemExit(
            "usage: python -m tests.integration.opcua_server bench [NODES SECONDS "
            "PUBLISHING_MS QUEUE_SIZE] [--stock-server]"
        )


if __name__ == "__main__":
    main()
