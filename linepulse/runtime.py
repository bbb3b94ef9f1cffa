"""What every LinePulse service process shares: stop signals, a task dump, an HTTP server.

SIGTERM or SIGINT sets the service's stop event (each service then finishes its work in
hand and exits 0); SIGUSR1 logs what every task is waiting on, for a service that seems
stuck. uvicorn runs without its own signal handling, so that teardown happens in the
service's task group rather than after uvicorn re-raises a signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

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
    group.create_task(exit_on(stop, server), name=f"{name}-stopper")
    return server


async def exit_on(stop: asyncio.Event, server: uvicorn.Server) -> None:
    """Let `server` finish its requests and exit once `stop` is set."""
    await stop.wait()
    server.should_exit = True


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
