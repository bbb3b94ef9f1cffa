"""What every LinePulse service process shares: stop signals, a task dump, an HTTP server,
and the one way a process runs its components until it is told to stop.

SIGTERM or SIGINT sets the process's stop event (each service then finishes its work in
hand and exits 0); SIGUSR1 logs what every task is waiting on, for a service that seems
stuck. uvicorn runs without its own signal handling, so that teardown happens in the
service's task group rather than after uvicorn re-raises a signal.

A service is a component (`open_kpi`, `open_alerts`, `open_ingest`): an async context
manager that opens what the service needs and closes it in reverse order, exposing its
long-running `tasks` and the apps it `serves`. The composition root (services/app/: the
CLI and the demo) opens components, then runs them under `run_until_stop`, one task
group for the whole process, so every component stops on the same event and is closed
after its tasks have returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import uvicorn

from linepulse.http.settings import TlsSettings

log = logging.getLogger(__name__)


def install_stop_signals(stop: asyncio.Event, what: str = "stopping") -> None:
    loop = asyncio.get_running_loop()

    def request_stop(sig: signal.Signals) -> None:
        log.info("%s: %s", sig.name, what)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, sig)
    loop.add_signal_handler(signal.SIGUSR1, dump_tasks)


def stop_on_signals(what: str) -> asyncio.Event:
    """The process's stop event, set by SIGTERM or SIGINT (logging `what` is being done)."""
    stop = asyncio.Event()
    install_stop_signals(stop, what)
    return stop


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `event`; whether it is set now.

    Use it rather than `asyncio.wait_for(event.wait(), timeout)`: Python 3.11's `wait_for`
    returns normally when it is cancelled in the same loop step as the event is set, so a
    task cancelled to stop went on instead (the MQTT acknowledger then waited forever for
    a batch, and the ingester never exited). `asyncio.timeout` lets the cancellation
    through."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()


async def wait_any(events: Iterable[asyncio.Event], within: float | None = None) -> None:
    """Return when one of `events` is set, or after `within` seconds (None: no limit)."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def dump_tasks() -> None:
    buffer = io.StringIO()
    for task in asyncio.all_tasks():
        buffer.write(f"--- {task.get_name()}\n")
        task.print_stack(limit=12, file=buffer)
    log.warning("tasks:\n%s", buffer.getvalue())


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class HttpSettings:
    host: str
    port: int
    tls: TlsSettings | None = None  # HTTPS with this certificate and key; plain HTTP if None

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"


def serve_http(
    group: asyncio.TaskGroup,
    stop: asyncio.Event,
    app: Any,
    host: str,
    port: int,
    name: str,
    *,
    lifespan: Literal["on", "off"] = "off",
    tls: TlsSettings | None = None,
    on_stop: Callable[[], None] | None = None,
) -> uvicorn.Server:
    """Serve `app` in `group` until `stop` is set; returns the server (still starting).

    With `tls`, HTTPS only: uvicorn loads the certificate and key when the server starts
    (a missing file fails the task group, and so the service, at start-up)."""
    options = {} if tls is None else tls.uvicorn_options()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan=lifespan, **options
    )
    server = QuietServer(config)
    group.create_task(server.serve(), name=name)
    group.create_task(exit_on(stop, server, on_stop), name=f"{name}-stopper")
    return server


async def exit_on(
    stop: asyncio.Event, server: uvicorn.Server, on_stop: Callable[[], None] | None = None
) -> None:
    """Let `server` finish its requests and exit once `stop` is set (calling `on_stop`
    first: uvicorn waits for open responses, so endless ones must be told to end)."""
    await stop.wait()
    if on_stop is not None:
        on_stop()
    server.should_exit = True


Job = Callable[[asyncio.Event], Coroutine[Any, Any, object]]


@dataclass(frozen=True)
class Task:
    """A long-running loop of a component: `run(stop)` returns once `stop` is set, having
    finished its work in hand; an exception from it stops the whole process."""

    name: str
    run: Job


@dataclass(frozen=True)
class Served:
    """An ASGI app a component serves, and where. `lifespan="on"` for an app that opens
    its own clients in its lifespan; `on_stop` ends what would keep the server from
    exiting (the live board's event streams)."""

    name: str
    app: Any
    http: HttpSettings
    lifespan: Literal["on", "off"] = "off"
    on_stop: Callable[[], None] | None = None


class Component(Protocol):
    """What the composition root runs of an opened service."""

    @property
    def tasks(self) -> Sequence[Task]: ...

    @property
    def served(self) -> Sequence[Served]: ...


class Service(Component, Protocol):
    """A component a command runs on its own (`linepulse kpi`, `alerts`, `ingest`)."""

    async def wait_for_start(self, stop: asyncio.Event) -> bool:
        """Wait for what the component needs before its tasks can start (the alerts
        service waits for its topics, never creating them); False if `stop` came first."""
        ...


class StartRefused(Exception):
    """A service cannot start as configured (no sources, no rules, an unreadable token
    file): the message says why, and the command exits 2 without starting anything."""


class Running:
    """The process's task group while it runs: start tasks and servers in it, in stages
    if need be (the demo serves its APIs only once the history is worked off)."""

    def __init__(self, group: asyncio.TaskGroup, stop: asyncio.Event) -> None:
        self.group = group
        self.stop = stop

    def start(self, *tasks: Task) -> None:
        for task in tasks:
            self.group.create_task(task.run(self.stop), name=task.name)

    def serve(self, served: Served) -> uvicorn.Server:
        """Serve `served.app` until `stop`; returns the server (still starting)."""
        http = served.http
        return serve_http(
            self.group,
            self.stop,
            served.app,
            http.host,
            http.port,
            served.name,
            lifespan=served.lifespan,
            tls=http.tls,
            on_stop=served.on_stop,
        )

    def add(self, component: Component) -> None:
        """Every task of `component` and every app it serves."""
        self.start(*component.tasks)
        for served in component.served:
            self.serve(served)


@contextlib.asynccontextmanager
async def run_until_stop(stop: asyncio.Event) -> AsyncIterator[Running]:
    """One task group for the process: what the body starts in the `Running` it is given
    runs until `stop` is set (every task then finishes its work in hand and returns);
    leaving the block waits for all of them. A task that fails cancels the others and
    its error leaves the block (in an `ExceptionGroup`), so the components around the
    block are closed on error as on a clean stop."""
    async with asyncio.TaskGroup() as group:
        yield Running(group, stop)


class PortInUseError(Exception):
    """A port the user asked for (`option`) cannot be listened on."""

    def __init__(self, port: int, option: str) -> None:
        super().__init__(
            f"port {port} is in use ({option}); pick another with {option}, "
            "or leave it out to take a free one"
        )
        self.port, self.option = port, option


@dataclass(frozen=True)
class PortWish:
    """One port a command listens on: `asked` by the user (None: not given) for `option`,
    else `default` when it is free."""

    option: str
    asked: int | None
    default: int


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host`:`port` now. Bound as uvicorn binds
    (SO_REUSEADDR: a port in TIME_WAIT is free) and let go at once."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def choose_ports(host: str, wishes: list[PortWish]) -> tuple[list[int], list[str]]:
    """A port per wish, all different: an asked port as asked (`PortInUseError` if it is
    busy), a default one when free, else one the kernel picks on `host`. Also a note per
    default that was busy, naming the port taken instead, for the user to see."""
    import socket

    chosen: list[int] = []
    notes: list[str] = []
    for wish in wishes:
        if wish.asked is not None:
            if wish.asked in chosen or not port_free(host, wish.asked):
                raise PortInUseError(wish.asked, wish.option)
            chosen.append(wish.asked)
            continue
        if wish.default not in chosen and port_free(host, wish.default):
            chosen.append(wish.default)
            continue
        port = 0
        while port == 0 or port in chosen:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
        chosen.append(port)
        notes.append(f"port {wish.default} is in use: {wish.option} {port} taken instead")
    return chosen, notes


def free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 (held open together, so they differ)."""
    import socket

    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
