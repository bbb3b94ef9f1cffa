"""Writes sent to a standby of a replicated alerts service go to the active instance.

Acks and silences change the state only the active instance writes
(services/alerts/failover.py), so a standby passes every write request (any method but
GET, HEAD and OPTIONS) on to the API of the active instance, as the topic names it
(`alerts.state`'s `active` record, its `url`), and answers with that instance's answer.
The caller may use any instance, as behind a load balancer. The request's token goes
along; the active instance checks it again. While no instance is active (a takeover
under way) the answer is a 503 with `Retry-After`. A request already passed on once is
never passed on again (header `X-LinePulse-Forwarded`), so two instances that each
believe the other active cannot bounce a request between them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import httpx

from linepulse.http.guard import READ_METHODS, Asgi, Message, Receive, Scope, Send, problem

FORWARDED_HEADER: Final = b"x-linepulse-forwarded"
# Headers of the request that go along (the body's type and the credentials).
PASSED_HEADERS: Final = frozenset({b"authorization", b"x-api-key", b"content-type", b"accept"})
FORWARD_TIMEOUT_S: Final = 10.0
RETRY: Final = {"retry-after": "2"}  # seconds a caller waits before trying again


class ForwardWrites:
    """ASGI middleware: `writes_here()` false -> the request goes to `active_url()`."""

    def __init__(
        self,
        app: Asgi,
        writes_here: Callable[[], bool],
        active_url: Callable[[], str | None],
    ) -> None:
        self.app = app
        self._writes_here = writes_here
        self._active_url = active_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in READ_METHODS
            or not scope["path"].startswith("/v1/")
            or self._writes_here()
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        url = self._active_url()
        if url is None or FORWARDED_HEADER in headers:
            await problem(
                send,
                503,
                "no active alerts instance answers yet (a takeover is under way); retry in a "
                "few seconds",
                RETRY,
            )
            return
        body = await _body(receive)
        target = url.rstrip("/") + scope["path"]
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        passed = {
            k.decode(): v.decode("latin-1") for k, v in headers.items() if k in PASSED_HEADERS
        }
        passed[FORWARDED_HEADER.decode()] = "1"
        try:
            async with httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S) as client:
                answer = await client.request(scope["method"], target, content=body, headers=passed)
        except httpx.HTTPError as error:
            await problem(
                send,
                503,
                f"the active alerts instance at {url} did not answer ({type(error).__name__}); "
                "retry in a few seconds",
                RETRY,
            )
            return
        kept = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in answer.headers.items()
            if name.lower() in ("content-type", "retry-after", "www-authenticate")
        ]
        await send({"type": "http.response.start", "status": answer.status_code, "headers": kept})
        await send({"type": "http.response.body", "body": answer.content})


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)
