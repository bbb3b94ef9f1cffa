"""Receivers that we control, on loopback, for the alert channel tests.

`HttpReceiver` is a small HTTP/1.1 server (asyncio streams, keep-alive) that records every
request and answers from a script (say 500 twice, then 429 with Retry-After, then 200) so a
test can stage an outage; after the script it answers `default_status`. `SmtpReceiver` is
aiosmtpd's SMTP server on the test's own event loop, recording each message, and able to
answer 451 (try later) for the first N messages.

Both bind port 0: the kernel picks a free port, so parallel runs never collide.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 429: "Too Many Requests"}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int  # what we answered
    at: float  # time.monotonic() when it arrived

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


class HttpReceiver:
    """Records requests; answers `script` replies in order, then `default`."""

    def __init__(self, script: list[Reply] | None = None, default: Reply | None = None) -> None:
        self.script = list(script or [])
        self.default = default or Reply()
        self.requests: list[Request] = []
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> HttpReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):  # Server.close_clients() is Python 3.13+
            writer.close()
        await self._server.wait_closed()

    def accepted(self) -> list[Request]:
        return [r for r in self.requests if r.accepted]

    async def wait_for(self, done: Callable[[list[Request]], bool], limit_s: float = 30) -> None:
        """Until `done(requests)` holds; fails the test after `limit_s` (a hang, not a
        performance bound)."""
        async with asyncio.timeout(limit_s), self._changed:
            await self._changed.wait_for(lambda: done(self.requests))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                arrived = time.monotonic()
                reply = self.script.pop(0) if self.script else self.default
                data = reply.body.encode()
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                writer.write(
                    (
                        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}\r\n"
                        f"Content-Length: {len(data)}\r\nContent-Type: text/plain\r\n{extra}\r\n"
                    ).encode()
                    + data
                )
                await writer.drain()
                async with self._changed:
                    self.requests.append(
                        Request(method, path, headers, body, reply.status, arrived)
                    )
                    self._changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@dataclass(frozen=True)
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: Message
    authenticated_as: str | None


class SmtpReceiver:
    """aiosmtpd on loopback. With `users`, AUTH LOGIN/PLAIN is offered (over plain TCP,
    which aiosmtpd allows only when told: `auth_require_tls=False`) and required."""

    def __init__(self, *, fail_first: int = 0, users: dict[str, str] | None = None) -> None:
        self.mails: list[Mail] = []
        self.fail_first = fail_first
        self.users = users
        self.refused = 0
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> SmtpReceiver:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._protocol, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _protocol(self) -> SMTP:
        if self.users is None:
            return SMTP(self, hostname="receiver.test", loop=asyncio.get_running_loop())
        return SMTP(
            self,
            hostname="receiver.test",
            loop=asyncio.get_running_loop(),
            authenticator=self._authenticate,
            auth_required=True,
            auth_require_tls=False,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self.users is not None
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if self.users.get(user) == password:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refused < self.fail_first:
            self.refused += 1
            return "451 4.3.0 try again later"
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        user = session.auth_data if isinstance(session.auth_data, str) else None
        async with self._changed:
            self.mails.append(
                Mail(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    message_from_bytes(content),
                    user,
                )
            )
            self._changed.notify_all()
        return "250 OK"

    async def wait_for(self, count: int, limit_s: float = 30) -> None:
        async with asyncio.timeout(limit_s), self._changed:
            await self._changed.wait_for(lambda: len(self.mails) >= count)
