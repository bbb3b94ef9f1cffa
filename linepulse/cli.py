"""The `linepulse` command: one entry point, a sub-command per service.

Settings are built here, in `main`, and passed down; nothing is configured at import.
Exit codes: 0 done, 1 the input could not be read, 2 the command line or the plant
config is wrong (the message says which key), or a Kafka topic is laid out differently
from it (the message says how to fix the topic).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO, TypeVar, get_args

import typer
from tqdm import tqdm

from linepulse.config import WINDOW_KINDS, ConfigError, PlantConfig, WindowKind, load_config
from linepulse.events import EventError, parse_ts

if TYPE_CHECKING:
    from linepulse.http_security import TlsSettings
    from services.ingest.simulator.scenario import Scenario

app = typer.Typer(
    name="linepulse",
    help="Streaming OEE, yield and downtime KPIs for plant-floor telemetry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    plant config (raised at start, or from a task of the service) is a config error."""
    from linepulse.bus.topics import TopicLayoutError

    try:
        return asyncio.run(service)
    except* TopicLayoutError as group:
        refused: BaseException = group
        while isinstance(refused, BaseExceptionGroup):  # task groups nest
            refused = refused.exceptions[0]
    raise _fail(str(refused), 2)


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "warning",
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
    bar = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc="replay",
        file=sys.stderr,
        disable=(not sys.stderr.isatty() or size < 50_000_000)
        if progress is None
        else not progress,
    )
    last = 0

    def on_progress(done: int) -> None:
        nonlocal last
        bar.update(done - last)
        last = done

    out: BinaryIO
    try:
        out = output.open("wb") if output else sys.stdout.buffer
    except OSError as error:
        raise _fail(f"cannot write {output}: {error.strerror}", 1) from None
    try:
        summary = replay(core, events, out, on_reject=on_reject, on_progress=on_progress)
    finally:
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
    typer.Option(help="The alerts API the live board at / shows and acks through."),
]
DbOption = Annotated[
    Path, typer.Option(help="DuckDB file of the KPI history (':memory:' for none).")
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
    from linepulse.http_security import TlsSettings

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


def _serve(
    plant: PlantConfig,
    kafka: str | None,
    state_dir: Path | None,
    api: tuple[str, int, Path, str | None, TlsSettings | None] | None,
) -> None:
    from services.kpi.service import ApiSettings, run_service

    bootstrap = _bootstrap(plant, kafka)
    settings = ApiSettings(*api) if api else None
    raise typer.Exit(
        _run_on_kafka(run_service(plant, bootstrap, state_dir=state_dir, api=settings))
    )


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
    db: DbOption = Path("linepulse-kpi.duckdb"),
    alerts_url: AlertsUrlOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
) -> None:
    """Run a streaming KPI worker: telemetry from Kafka, KPI records to the kpi topic."""
    plant = _load(config)
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    served = (host, port, db, alerts_url, tls) if api else None
    _serve(plant, kafka, state_dir or plant.kafka.state_dir, served)


@app.command("api")
def api_command(
    config: ConfigOption,
    kafka: KafkaOption = None,
    host: HostOption = "127.0.0.1",
    port: PortOption = 8080,
    db: DbOption = Path("linepulse-kpi.duckdb"),
    alerts_url: AlertsUrlOption = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
) -> None:
    """Serve the query API and the live board: the kpi topic materialised into DuckDB.

    Reason corrections need a token (api.token_env, LINEPULSE_API_TOKEN by default, or
    api.token_file); HTTPS with --tls-cert/--tls-key or api.tls."""
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    _serve(_load(config), kafka, None, (host, port, db, alerts_url, tls))


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
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
) -> None:
    """Read the configured OPC-UA and MQTT sources into the telemetry topic."""
    from linepulse.runtime import HttpSettings
    from services.ingest.service import run_ingest

    plant = _load(config)
    bootstrap = _bootstrap(plant, kafka)
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    http = HttpSettings(host, port, tls) if port else None
    raise typer.Exit(_run_on_kafka(run_ingest(plant, bootstrap, http)))


@app.command("alerts")
def alerts_command(
    config: ConfigOption,
    kafka: KafkaOption = None,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the alerts API (0: none).")] = 8081,
    state_dir: Annotated[
        Path | None, typer.Option(help="Alert state and outbox directory (else alerts.state_dir).")
    ] = None,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_client_ca: TlsClientCaOption = None,
) -> None:
    """Evaluate the alert rules on the kpi and telemetry topics; page the shift lead on duty."""
    from linepulse.runtime import HttpSettings
    from services.alerts.service import run_alerts

    plant = _load(config)
    bootstrap = _bootstrap(plant, kafka)
    tls = _tls(tls_cert, tls_key, tls_client_ca)
    http = HttpSettings(host, port, tls) if port else None
    raise typer.Exit(_run_on_kafka(run_alerts(plant, bootstrap, http, state_dir)))


@app.command("demo")
def demo_command(
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the KPI API and the live board.")] = 8080,
    alerts_port: Annotated[int, typer.Option(help="Port of the alerts API.")] = 8081,
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
) -> None:
    """The whole flow in one process on a simulated 20-machine plant: no broker needed."""
    from services.demo import DemoSettings, run_demo

    if fast < 1:
        raise _fail("--fast must be at least 1", 2)
    settings = DemoSettings(host, port, alerts_port, seed, fast, kafka, webhook)
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
    raise typer.Exit(asyncio.run(_simulate(plant, seed, truth, chosen)))


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
    plant: PlantConfig, seed: int, truth: Path | None, scenario: Scenario | None
) -> int:
    from linepulse.runtime import install_stop_signals
    from services.ingest.simulator.run import run_simulator

    stop = asyncio.Event()
    install_stop_signals(stop, "stopping the simulator")
    stats = await run_simulator(plant, seed=seed, truth=truth, stop=stop, scenario=scenario)
    log.info("simulator stopped: %s", stats)
    return 0


def _window_kinds(values: list[str] | None) -> tuple[WindowKind, ...] | None:
    if not values:
        return None
    bad = [v for v in values if v not in WINDOW_KINDS]
    if bad:
        raise _fail(f"--window must be one of {', '.join(WINDOW_KINDS)}; got {', '.join(bad)}", 2)
    return tuple(k for k in get_args(WindowKind) if k in values)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
