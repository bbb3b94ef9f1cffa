"""The `linepulse` command: one entry point, a sub-command per service.

Settings are built here, in `main`, and passed down; nothing is configured at import.
Exit codes: 0 done, 1 the input could not be read, 2 the command line or the plant
config is wrong (the message says which key), or a Kafka topic is laid out differently
from it (the message says how to fix the topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, Protocol, TypeVar, get_args

import typer

from linepulse.config import WINDOW_KINDS, ConfigError, PlantConfig, WindowKind, load_config
from linepulse.events import EventError, parse_ts

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from linepulse.bus import KafkaClients
    from linepulse.http.settings import TlsSettings
    from linepulse.runtime import Service
    from services.alerts.service import AlertsSettings
    from services.ingest.service import IngestServiceSettings
    from services.ingest.simulator.scenario import Scenario
    from services.kpi.service import KpiSettings

app = typer.Typer(
    name="linepulse",
    help="Streaming OEE, yield and downtime KPIs for plant-floor telemetry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's own help layout: typer's rich one prints every flag as `--api <bool>`, as if
    # it took a value (`--help <bool>` too); click's prints `--api` and `--x / --no-x`.
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},  # the summaries of commands in full
)
log = logging.getLogger("linepulse")

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="Plant config YAML.", envvar="LINEPULSE_CONFIG"),
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"linepulse: {message}", err=True)
    return typer.Exit(code)


T = TypeVar("T")


def _run_on_kafka(service: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run` for a command on Kafka topics: a topic laid out differently from the
    plant config (raised at start, or from a task of the service), or a broker that never
    answered, is a one-line error and exit 2."""
    from linepulse.bus.topics import KafkaStartError

    try:
        return asyncio.run(service)
    except* KafkaStartError as group:
        refused: BaseException = group
        while isinstance(refused, BaseExceptionGroup):  # task groups nest
            refused = refused.exceptions[0]
    raise _fail(str(refused), 2)


def _print_version(asked: bool) -> None:
    if not asked:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        typer.echo(f"linepulse {version('linepulse')}")
    except PackageNotFoundError:  # run from a checkout that was never installed
        typer.echo("linepulse (version unknown: the package is not installed)")
    raise typer.Exit(0)


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "warning",
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    _setup_logging(log_level)


@app.command("replay")
def replay_command(
    events: Annotated[Path, typer.Argument(help="Telemetry events: .jsonl or .parquet")],
    config: ConfigOption,
    window: Annotated[
        list[str] | None,
        typer.Option(
            "--window", "-w", help="Window kind to output (repeatable): 1m 15m 1h shift day."
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write JSON lines here, not stdout.")
    ] = None,
    max_errors: Annotated[
        int, typer.Option(help="Report at most this many bad lines one by one.")
    ] = 1000,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = None,
) -> None:
    """Replay telemetry from a file through the KPI core: final KPI records as JSON lines."""
    from services.kpi.core.engine import Core
    from services.kpi.replay import replay

    kinds = _window_kinds(window)
    try:
        plant = load_config(config)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    if not events.is_file():
        raise _fail(f"cannot read events file {events}", 1)
    core = Core.from_config(plant, kinds)

    shown = 0

    def on_reject(where: str, reason: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= max_errors:
            typer.echo(f"{events}: {where}: {reason}", err=True)

    size = events.stat().st_size
    if progress is None:
        progress = sys.stderr.isatty() and size >= 50_000_000
    on_progress: Callable[[int], None] | None = None
    if progress:
        # Imported only for a bar: tqdm's import is ~50 ms of every replay's start.
        from tqdm import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc="replay", file=sys.stderr)

        def advance(done: int) -> None:
            bar.update(done - bar.n)

        on_progress = advance

    out: BinaryIO
    try:
        out = output.open("wb") if output else sys.stdout.buffer
    except OSError as error:
        raise _fail(f"cannot write {output}: {error.strerror}", 1) from None
    try:
        summary = replay(core, events, out, on_reject=on_reject, on_progress=on_progress)
    finally:
        if progress:
            bar.close()
        if output:
            out.close()
        else:
            out.flush()
    stats = summary.stats
    if shown > max_errors:
        typer.echo(f"{events}: ... and {shown - max_errors} more rejected inputs", err=True)
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary.rejected_by_reason.items()))
    typer.echo(
        f"replay: {stats.events + summary.malformed} events read, {stats.used} used, "
        f"{summary.malformed} malformed, {stats.rejected} rejected, "
        f"{stats.bad_quality} bad-quality ignored, {stats.other_signals} non-KPI signals, "
        f"{stats.late} late, {stats.too_late} too late, "
        f"{stats.implausible} implausible counter jumps; {summary.records} records written"
        + (f"\nreplay: rejected by reason: {reasons}" if reasons else ""),
        err=True,
    )


KafkaOption = Annotated[
    str | None,
    typer.Option(
        "--kafka",
        help="Kafka bootstrap HOST:PORT (else kafka.bootstrap in the config).",
        envvar="LINEPULSE_KAFKA",
    ),
]


def _load(config: Path) -> PlantConfig:
    try:
        return load_config(config)
    except ConfigError as error:
        raise _fail(str(error), 2) from None


def _bootstrap(plant: PlantConfig, kafka: str | None) -> str:
    bootstrap = kafka or plant.kafka.bootstrap
    if not bootstrap:
        raise _fail("no Kafka broker: pass --kafka HOST:PORT or set LINEPULSE_KAFKA", 2)
    from linepulse.bus.security import KafkaSecurityError, client_kwargs

    try:  # a missing password or TLS file is a config error, said before anything starts
        client_kwargs(plant.kafka.security)
    except KafkaSecurityError as error:
        raise _fail(str(error), 2) from None
    return bootstrap


HostOption = Annotated[str, typer.Option(help="Address the HTTP API listens on.")]
PortOption = Annotated[int, typer.Option(help="Port of the HTTP API.")]
AlertsUrlOption = Annotated[
    str | None,
    typer.Option(
        help="The alerts API the live board at / shows and acks through, and the shift "
        "report asks for the shift's notes and alerts."
    ),
]
DbOption = Annotated[
    Path | None,
    typer.Option(
        help="DuckDB file of the KPI history (':memory:' for none).",
        show_default="kpi/history.duckdb under --data-dir",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the service keeps its state, in a subdirectory of its own (kpi/, "
        "alerts/, ingest/); relative state paths of the config are under it. By default "
        "the user's state directory, $XDG_STATE_HOME/linepulse.",
        envvar="LINEPULSE_DATA_DIR",
        show_default="~/.local/state/linepulse",
    ),
]
TlsCertOption = Annotated[
    Path | None, typer.Option("--tls-cert", help="Serve HTTPS with this PEM certificate chain.")
]
TlsKeyOption = Annotated[
    Path | None, typer.Option("--tls-key", help="The PEM private key of --tls-cert.")
]
TlsClientCaOption = Annotated[
    Path | None,
    typer.Option("--tls-client-ca", help="Require client certificates signed by this CA."),
]


def _tls(cert: Path | None, key: Path | None, client_ca: Path | None) -> TlsSettings | None:
    """HTTPS settings from the command line (they override the config's); None if none."""
    from linepulse.http.settings import TlsSettings

    if cert is None and key is None:
        if client_ca is not None:
            raise _fail("--tls-client-ca needs --tls-cert and --tls-key", 2)
        return None
    if cert is None or key is None:
        raise _fail("HTTPS needs both --tls-cert and --tls-key", 2)
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-client-ca", client_ca)):
        if path is not None and not path.is_file():
            raise _fail(f"{option}: cannot read {path}", 2)
    return TlsSettings(
        certfile=cert,
        keyfile=key,
        client_ca=client_ca,
        client_certs="none" if client_ca is None else "required",
    )


def _data_dir(plant: PlantConfig, data_dir: Path | None) -> tuple[PlantConfig, Path]:
    """The data directory (the option, else the user's state directory) and the plant
    config with its relative state paths resolved against it; nothing is created yet."""
    from linepulse.data_dir import default_data_dir, with_data_dir

    root = (data_dir or default_data_dir()).expanduser().absolute()
    return with_data_dir(plant, root), root


def _prepare(directory: Path, what: str, root: Path) -> Path:
    """`directory`, created and writable, or exit 2 with one line naming it."""
    from linepulse.data_dir import DataDirError, prepare

    try:
        return prepare(directory.expanduser().absolute(), what)
    except DataDirError as error:
        hint = "; choose another with --data-dir or LINEPULSE_DATA_DIR"
        raise _fail(f"{error}{hint if directory.is_relative_to(root) else ''}", 2) from None


def _claim(held: contextlib.ExitStack, state: Path, holder: str) -> None:
    """Hold `state` for this process until `held` closes, or exit 2 if another has it."""
    from linepulse.data_dir import DataDirError, claim

    try:
        held.enter_context(claim(state, holder))
    except DataDirError as error:
        raise _fail(str(error), 2) from None


def _history(db: Path | None, root: Path, held: contextlib.ExitStack) -> Path:
    """The KPI API's DuckDB file (--db, else under the data dir), its folder created and
    the file claimed: DuckDB would refuse a second process only with a traceback."""
    from linepulse.data_dir import KPI_HISTORY

    if db is not None and str(db) == ":memory:":
        return db
    path = (db if db is not None else root / KPI_HISTORY).expanduser().absolute()
    _prepare(path.parent, "--db folder" if db is not None else "the KPI history folder", root)
    _claim(held, path, "linepulse KPI API")
    return path


def _serve(
    plant: PlantConfig,
    kafka: str | None,
    data_dir: Path | None,
    worker: tuple[Path | None] | None,
    api: tuple[str, int, Path | None, str | None, TlsSettings | None] | None,
) -> None:
    """The KPI worker (given `worker`: its --state-dir, else the config's
    kafka.state_dir), the query API (given `api`), or both."""
    from linepulse.runtime import HttpSettings
    from services.kpi.service import ApiSettings, KpiSettings

    bootstrap = _bootstrap(plant, kafka)
    plant, root = _data_dir(plant, data_dir)
    state_dir = None
    if worker is not None:
        (checkpoints,) = worker
        what = "--state-dir" if checkpoints is not None else "kafka.state_dir"
        state_dir = _prepare(checkpoints or plant.kafka.state_dir, what, root)
    with contextlib.ExitStack() as held:
        served = None
        if api is not None:
            host, port, db, alerts_url, tls = api
            http = HttpSettings(host, port, tls or plant.api.tls)
            served = ApiSettings(http, _history(db, root, held), alerts_url)
        settings = KpiSettings(plant, bootstrap, state_dir, served)
        raise typer.Exit(_run_on_kafka(_run_kpi(settings)))


class _ServiceSettings(Protocol):
    """What `_run_service` reads of a service's settings."""

    @property
    def plant(self) -> PlantConfig: ...


Settings = TypeVar("Settings", bound=_ServiceSettings)


async def _run_service(
    open_component: Callable[
        [Settings, KafkaClients, CollectorRegistry], AbstractAsyncContextManager[Service]
    ],
    settings: Settings,
    stopping: str,
) -> int:
    """One service on Kafka (with the config's TLS/SASL for every client) from start to a
    signal: opened, waited for, run until stopped, closed. 2 if it refuses to start."""
    from prometheus_client import CollectorRegistry

    from linepulse.bus.clients import AioKafkaClients
    from linepulse.runtime import StartRefused, run_until_stop, stop_on_signals

    stop = stop_on_signals(stopping)
    clients = AioKafkaClients(settings.plant.kafka.security)
    try:
        async with open_component(settings, clients, CollectorRegistry()) as component:
            if not await component.wait_for_start(stop):
                return 0
            async with run_until_stop(stop) as running:
                running.add(component)
    except StartRefused as refused:
        log.error("%s", refused)
        return 2
    return 0


async def _run_kpi(settings: KpiSettings) -> int:
    from services.kpi.service import open_kpi

    stopping = "stopping (finish the batch, checkpoint, commit, leave)"
    return await _run_service(open_kpi, settings, stopping)


@app.command("kpi")
def kpi_command(
    config: ConfigOption,
    kafka: KafkaOption = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint directory (else kafka.state_dir).")
    ] = None,
    api: Annotated[
        bool, typer.Option("--api", help="Serve the query API in this process too.")
    ] = False,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8080,
    db: DbOption = None,
    alerts_url: AlertsUrlOption = None,
    data_dir: DataDirOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
) -> None:
    """Run a streaming KPI worker: telemetry from Kafka, KPI records to the kpi topic."""
    plant = _load(config)
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    served = (host, port, db, alerts_url, tls) if api else None
    _serve(plant, kafka, data_dir, (state_dir,), served)


@app.command("api")
def api_command(
    config: ConfigOption,
    kafka: KafkaOption = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8080,
    db: DbOption = None,
    alerts_url: AlertsUrlOption = None,
    data_dir: DataDirOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
) -> None:
    """Serve the query API and the live board: the kpi topic materialised into DuckDB.

    Reason corrections need a token (api.token_env, LINEPULSE_API_TOKEN by default, or
    api.token_file); HTTPS with --tls-cert/--tls-key or api.tls."""
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    _serve(_load(config), kafka, data_dir, None, (host, port, db, alerts_url, tls))


@app.command("produce")
def produce_command(
    events: Annotated[Path, typer.Argument(help="Telemetry events: .jsonl or .parquet")],
    config: ConfigOption,
    kafka: KafkaOption = None,
) -> None:
    """Send telemetry from a file to the telemetry topic, batched on line home partitions."""
    from services.ingest.producer import produce_file

    plant = _load(config)
    bootstrap = _bootstrap(plant, kafka)
    if not events.is_file():
        raise _fail(f"cannot read events file {events}", 1)

    def on_reject(where: str, reason: str) -> None:
        typer.echo(f"{events}: {where}: {reason}", err=True)

    sent = _run_on_kafka(produce_file(plant, bootstrap, events, on_reject))
    typer.echo(f"produce: {sent} events sent to {plant.kafka.telemetry.name}", err=True)


@app.command("ingest")
def ingest_command(
    config: ConfigOption,
    kafka: KafkaOption = None,
    host: Annotated[str, typer.Option(help="Address of /metrics and /healthz.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of /metrics and /healthz (0: none).")] = 9101,
    data_dir: DataDirOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
) -> None:
    """Read the configured OPC-UA and MQTT sources into the telemetry topic."""
    from linepulse.runtime import HttpSettings
    from services.ingest.service import IngestServiceSettings

    plant = _load(config)
    bootstrap = _bootstrap(plant, kafka)
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    http = HttpSettings(host, port, tls) if port else None
    plant, root = _data_dir(plant, data_dir)
    spool = _prepare(plant.ingest.spool_dir, "ingest.spool_dir", root)
    _prepare(plant.ingest.state_dir, "ingest.state_dir", root)
    with contextlib.ExitStack() as held:
        _claim(held, spool, "linepulse ingest")
        settings = IngestServiceSettings(plant, bootstrap, http)
        raise typer.Exit(_run_on_kafka(_run_ingest(settings)))


async def _run_ingest(settings: IngestServiceSettings) -> int:
    from services.ingest.service import open_ingest

    sources = settings.plant.sources
    if not sources.opcua and not sources.mqtt:
        log.error("the plant config has no sources (sources.opcua, sources.mqtt): nothing to read")
        return 2
    stopping = "stopping (flush the ingesters, send or spool what is held)"
    return await _run_service(open_ingest, settings, stopping)


@app.command("alerts")
def alerts_command(
    config: ConfigOption,
    kafka: KafkaOption = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the alerts API (0: none).")] = 8081,
    state_dir: Annotated[
        Path | None, typer.Option(help="Alert state and outbox directory (else alerts.state_dir).")
    ] = None,
    data_dir: DataDirOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
    advertise_url: Annotated[
        str | None,
        typer.Option(
            envvar="LINEPULSE_ALERTS_ADVERTISE_URL",
            help="Where the other instances reach this one's API, with alerts."
            "high_availability (default: the listening address).",
        ),
    ] = None,
) -> None:
    """Evaluate the alert rules on the kpi and telemetry topics; page the shift lead on duty."""
    from linepulse.runtime import HttpSettings
    from services.alerts.service import AlertsSettings

    plant = _load(config)
    bootstrap = _bootstrap(plant, kafka)
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    plant, root = _data_dir(plant, data_dir)
    http = HttpSettings(host, port, tls or plant.alerts.api_tls) if port else None
    what = "--state-dir" if state_dir is not None else "alerts.state_dir"
    state = _prepare(state_dir or plant.alerts.state_dir, what, root)
    with contextlib.ExitStack() as held:
        _claim(held, state, "linepulse alerts")
        settings = AlertsSettings(plant, bootstrap, state, http, advertise_url=advertise_url)
        raise typer.Exit(_run_on_kafka(_run_alerts(settings)))


async def _run_alerts(settings: AlertsSettings) -> int:
    """The alerts service once its topics exist (it never creates them), until stopped."""
    from services.alerts.service import open_alerts

    if not settings.plant.alerts.rules:
        log.error("the plant config has no alert rules (alerts.rules): nothing to evaluate")
        return 2
    stopping = "stopping (the outbox keeps what is undelivered)"
    return await _run_service(open_alerts, settings, stopping)


@app.command("demo")
def demo_command(
    host: HostOption = "127.0.0.1",
    port: Annotated[
        int | None,
        typer.Option(help="Port of the KPI API and the live board [default: 8080, or a free one]."),
    ] = None,
    alerts_port: Annotated[
        int | None,
        typer.Option(help="Port of the alerts API [default: 8081, or a free one]."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated plant.")] = 1,
    fast: Annotated[
        float, typer.Option(help="Make stops and changeovers this many times more frequent.")
    ] = 1.0,
    kafka: Annotated[
        str | None,
        typer.Option(help="Run on this Kafka broker instead of the in-process bus."),
    ] = None,
    webhook: Annotated[
        str | None,
        typer.Option(help="Also POST every alert notification here (Alertmanager webhook JSON)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Simulate this plant file instead of the packaged 20-machine plant "
            "(its sources are moved to loopback, its alert channels to the console).",
        ),
    ] = None,
) -> None:
    """The whole flow in one process on a simulated 20-machine plant: no broker needed."""
    from linepulse.runtime import PortInUseError, PortWish, choose_ports
    from services.app.demo import DemoSettings, run_demo

    if fast < 1:
        raise _fail("--fast must be at least 1", 2)
    if config is not None:
        plant = _load(config)
        if not plant.sources.opcua and not plant.sources.mqtt:
            raise _fail(f"{config}: no sources to simulate (sources.opcua, sources.mqtt)", 2)
    wishes = [PortWish("--port", port, 8080), PortWish("--alerts-port", alerts_port, 8081)]
    try:
        (board_port, alerts_at), notes = choose_ports(host, wishes)
    except PortInUseError as error:
        raise _fail(str(error), 2) from None
    except OSError as error:  # the host itself cannot be bound (not an address of ours)
        raise _fail(f"cannot listen on {host}: {error.strerror} (--host)", 2) from None
    settings = DemoSettings(
        host, board_port, alerts_at, seed, fast, kafka, webhook, config, tuple(notes)
    )
    raise typer.Exit(_run_on_kafka(run_demo(settings, typer.echo)))


@app.command("simulate")
def simulate_command(
    config: ConfigOption,
    seed: Annotated[int, typer.Option(help="Seed of the simulated behaviour.")] = 1,
    truth: Annotated[
        Path | None, typer.Option(help="Write the true events here, as telemetry JSON lines.")
    ] = None,
    scenario: Annotated[
        str | None,
        typer.Option(
            help="bottleneck=M, slow=LINE[:F], couple=LINE[:S], speed=ID:F[:END], "
            "stops=ID:RUN_S|never[:DOWN_S]; comma-separated."
        ),
    ] = None,
    offline: Annotated[
        str | None,
        typer.Option(
            help="No servers: write the events of START/END (RFC 3339) to --truth, for "
            "`linepulse replay`. E.g. 2026-11-02T06:00:00Z/2026-11-02T14:00:00Z."
        ),
    ] = None,
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="The OPC-UA servers keep each variable's last hour (HistoryRead), as a PLC "
            "with Historizing variables: a restarted ingester fills its gap from it.",
        ),
    ] = False,
) -> None:
    """Simulate the plant's equipment: serve its OPC-UA endpoints, publish its MQTT sources."""
    from services.ingest.simulator.scenario import parse_scenario

    plant = _load(config)
    try:
        chosen = parse_scenario(scenario, plant) if scenario else None
    except ValueError as error:
        raise _fail(f"--scenario: {error}", 2) from None
    if offline is not None:
        raise typer.Exit(_simulate_offline(plant, seed, truth, chosen, offline))
    if not plant.sources.opcua and not plant.sources.mqtt:
        raise _fail("the plant config has no sources (sources.opcua, sources.mqtt)", 2)
    raise typer.Exit(asyncio.run(_simulate(plant, seed, truth, chosen, history)))


def _simulate_offline(
    plant: PlantConfig, seed: int, truth: Path | None, scenario: Scenario | None, span: str
) -> int:
    from services.ingest.simulator.generate import simulate_events
    from services.ingest.simulator.truth import TruthLog

    if truth is None:
        raise _fail("--offline writes to --truth FILE; give one", 2)
    try:
        start, end = (parse_ts(part) for part in span.split("/"))
    except (ValueError, EventError) as error:
        raise _fail(f"--offline must be START/END in RFC 3339: {error}", 2) from None
    if end <= start:
        raise _fail("--offline: END must be after START", 2)
    events = simulate_events(plant, seed=seed, start_ms=start, end_ms=end, scenario=scenario)
    with TruthLog(truth) as log_file:
        log_file.write(events)
    typer.echo(f"wrote {len(events)} events to {truth}", err=True)
    return 0


async def _simulate(
    plant: PlantConfig, seed: int, truth: Path | None, scenario: Scenario | None, history: bool
) -> int:
    from linepulse.runtime import stop_on_signals
    from services.ingest.simulator.run import run_simulator

    stop = stop_on_signals("stopping the simulator")
    stats = await run_simulator(
        plant, seed=seed, truth=truth, stop=stop, scenario=scenario, historize=history
    )
    log.info("simulator stopped: %s", stats)
    return 0


@app.command("check")
def check_command(
    config: ConfigOption,
    connect: Annotated[
        bool,
        typer.Option("--connect", help="Also connect to each source and look for every signal."),
    ] = False,
    listen_s: Annotated[
        float, typer.Option("--listen-s", help="With --connect: seconds to listen to MQTT.")
    ] = 5.0,
    timeout_s: Annotated[
        float, typer.Option("--timeout-s", help="With --connect: timeout of each connection.")
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Validate the plant config and print what it means; with --connect, check the sources.

    Exit codes: 0 all good, 1 a source unreachable or a signal not found, 2 config error."""
    import json
    from datetime import UTC, datetime

    from linepulse.config_report import build_report, render_text
    from services.alerts.routing import Duty

    plant = _load(config)
    if listen_s <= 0 or timeout_s <= 0:
        raise _fail("--listen-s and --timeout-s must be > 0", 2)
    report = build_report(plant, Duty(plant), datetime.now(UTC))
    document: dict[str, Any] = {"config": report.as_json()}
    text = render_text(report)
    code = 0
    if connect:
        from dataclasses import asdict

        from services.ingest.probe import probe, render_results

        if not plant.sources.opcua and not plant.sources.mqtt:
            raise _fail("--connect: the plant config has no sources (sources.opcua, .mqtt)", 1)
        results = asyncio.run(probe(plant, listen_s=listen_s, timeout_s=timeout_s))
        code = 0 if all(r.ok for r in results) else 1
        document["sources"] = [asdict(r) | {"ok": r.ok} for r in results]
        text += "\n\nSources\n" + render_results(results, listen_s)
        text += "\n\n" + (
            "all signals found" if code == 0 else "some signals NOT FOUND or sources UNREACHABLE"
        )
    typer.echo(json.dumps(document, indent=1) if as_json else text)
    raise typer.Exit(code)


@app.command("report")
def report_command(
    date: Annotated[str, typer.Option(help="The production day, local (YYYY-MM-DD).")],
    line: Annotated[
        str | None,
        typer.Option(help="The line (lines[].id): its shift report. Without: the plant's."),
    ] = None,
    shift: Annotated[str | None, typer.Option(help="The shift's name (shifts[].name).")] = None,
    period: Annotated[
        str,
        typer.Option(help="The plant report's period: shift, day or week (the ISO week)."),
    ] = "shift",
    url: Annotated[
        str, typer.Option(help="The KPI API (`linepulse api`, `linepulse demo`).")
    ] = "http://127.0.0.1:8080",
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Plant config: checks the line and shift here, and takes the API token "
            "from its api.token_file or api.token_env.",
        ),
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", help="html (a page for mail), pdf or json.")
    ] = "html",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print a line's shift report, or the plant's report of a shift, a day or a week
    (GET /v1/reports/shift or /v1/reports/plant of a running KPI API).

    A token for an API that guards reads (api.auth_reads) is read from the config's
    api.token_file or api.token_env with --config, else from LINEPULSE_API_TOKEN. A PDF
    needs --output. Exit codes: 0 written, 1 the API refused or is unreachable, 2 a
    wrong option or config."""
    import os

    import httpx

    if format_ not in ("html", "json", "pdf"):
        raise _fail(f"--format must be html, pdf or json, got {format_!r}", 2)
    if format_ == "pdf" and output is None:
        raise _fail("--format pdf writes a file: add --output FILE.pdf", 2)
    if period not in ("shift", "day", "week"):
        raise _fail(f"--period must be shift, day or week, got {period!r}", 2)
    if period == "shift" and shift is None:
        raise _fail("a shift's report needs --shift (or --period day or week)", 2)
    if line is not None and period != "shift":
        raise _fail("a line's report is of a shift: leave out --line for the plant's", 2)
    token = None
    if config is not None:
        token = _report_token(_load(config), line, date, shift if period == "shift" else None)
    token = token or os.environ.get("LINEPULSE_API_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = {"date": date, "format": format_}
    if shift is not None and period == "shift":
        query["shift"] = shift
    if line is None:
        route, what = "/v1/reports/plant", f"plant {period} {date}"
        query["period"] = period
    else:
        route, what = "/v1/reports/shift", f"{line} {shift} {date}"
        query["line"] = line
    try:
        response = httpx.get(url.rstrip("/") + route, params=query, headers=headers, timeout=90)
    except httpx.HTTPError as error:
        raise _fail(f"report: the KPI API at {url} does not answer ({error})", 1) from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise _fail(f"report: {response.status_code}: {detail}", 1)
    if output is None:
        typer.echo(response.text)
    else:
        output.write_bytes(response.content)
        typer.echo(f"report: {what} written to {output}", err=True)


def _report_token(plant: PlantConfig, line: str | None, day: str, shift: str | None) -> str | None:
    """The API token the plant config points at (or None); the line and the shift
    checked against the config first, so a typo is named here rather than by the API."""
    import datetime as dt

    from linepulse.calendar import Calendar

    lines = [known.id for known in plant.lines]
    if line is not None and line not in lines:
        raise _fail(f"--line {line!r} is not in the config; its lines: {', '.join(lines)}", 2)
    try:
        production_day = dt.date.fromisoformat(day)
    except ValueError:
        raise _fail(f"--date must be YYYY-MM-DD, got {day!r}", 2) from None
    if shift is not None:
        calendar = Calendar(plant)
        names = sorted(
            {
                span.name
                for known in ([line] if line else lines)
                for span in calendar.spans_on(known, production_day)
            }
        )
        if shift not in names:
            said = ", ".join(names) or "none (a day off)"
            where = line or "any line"
            raise _fail(
                f"--shift {shift!r} does not run on {where} on {day}; shifts then: {said}", 2
            )
    try:
        tokens = plant.api.resolve("api").tokens
    except ValueError as error:
        raise _fail(str(error), 2) from None
    return tokens[0].get_secret_value() if tokens else None


@app.command("spc")
def spc_command(
    events: Annotated[Path, typer.Argument(help="Telemetry events: .jsonl or .parquet")],
    config: ConfigOption,
    chart: Annotated[
        list[str] | None,
        typer.Option(help="machine/signal of a chart of spc: (repeatable); default: all."),
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Control charts and capability of process signals in a telemetry file, as the
    config's spc: section sets them (docs/spc.md). Exit codes: 0 written, 1 the file or
    the data cannot make a chart, 2 a wrong option or config."""
    import orjson

    from linepulse.calendar import Calendar
    from linepulse.event_files import read_batches
    from linepulse.spc_chart import SpcError, study
    from services.kpi.spc_report import spc_samples, spc_text

    if format_ not in ("text", "json"):
        raise _fail(f"--format must be text or json, got {format_!r}", 2)
    plant = _load(config)
    charts = list(plant.spc)
    if chart:
        known = {c.name: c for c in charts}
        unknown = [name for name in chart if name not in known]
        if unknown:
            said = ", ".join(known) or "none"
            raise _fail(f"--chart {', '.join(unknown)}: not in the config's spc: ({said})", 2)
        charts = [known[name] for name in chart]
    if not charts:
        raise _fail("the config has no spc: charts to draw (docs/spc.md)", 2)
    if not events.is_file():
        raise _fail(f"cannot read events file {events}", 1)
    samples = spc_samples(charts, (decoded.events for decoded, _ in read_batches(events, 200_000)))
    calendar = Calendar(plant)
    lines = {m: line.id for m, (line, _) in plant.machines().items()}
    try:
        studies = [study(c, samples[c.name], calendar, lines[c.machine]) for c in charts]
    except SpcError as error:
        raise _fail(str(error), 1) from None
    text = (
        orjson.dumps(studies, option=orjson.OPT_INDENT_2).decode()
        if format_ == "json"
        else spc_text(studies, plant.zone)
    )
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n", "utf-8")
        typer.echo(f"spc: {len(studies)} chart(s) written to {output}", err=True)


def _window_kinds(values: list[str] | None) -> tuple[WindowKind, ...] | None:
    if not values:
        return None
    bad = [v for v in values if v not in WINDOW_KINDS]
    if bad:
        raise _fail(f"--window must be one of {', '.join(WINDOW_KINDS)}; got {', '.join(bad)}", 2)
    return tuple(k for k in get_args(WindowKind) if k in values)


def main() -> None:
    app()
