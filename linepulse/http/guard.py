"""The guard of a LinePulse HTTP API: pure ASGI middleware that enforces the settings of
linepulse/http/settings.py, so that the KPI API and the alerts API answer alike:

- **Tokens.** `Authorization: Bearer <token>` or `X-API-Key: <token>`, compared in
  constant time (`hmac.compare_digest`) against every configured token.
  Reads need a token only with `auth_reads: true`; writes (any method but GET, HEAD and
  OPTIONS) always do. With no token configured writes are refused with 403: an unset
  secret must never mean "anyone may write". A missing or wrong token is a 401 with
  `WWW-Authenticate: Bearer`. A client is named in logs by its token's position
  (`token#2`) or its address, never by the token.
- **Request size.** A body larger than `limits.max_body_bytes` is a 413, whether
  Content-Length says so up front or a streamed (chunked) body grows past it; the guard
  holds at most that many bytes of a body before the app sees it, and drops (up to
  `DRAIN_BYTES`) what follows so that the client reads the 413 rather than a reset.
- **Rate.** A token bucket per client: per token when a valid one is sent, else per client
  address (so failed guesses are limited too). Reads and writes have their own buckets; an
  empty bucket is a 429 with `Retry-After` in whole seconds. `limits.exempt_paths` skip
  the limits and the read token. Behind a reverse proxy every client has the proxy's
  address: give clients tokens, or limit there.
- **CORS.** Starlette's `CORSMiddleware` with the settings' allow-list, outside the guard;
  credentials (cookies) stay off because the tokens travel in headers.

Refusals are `{"detail": "..."}` (`linepulse.errors.ErrorDetail`), like every other error
of the APIs; `GUARD_RESPONSES` documents them in the OpenAPI documents.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final

import orjson

from linepulse.errors import ErrorDetail
from linepulse.http.settings import ApiAccess

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Buckets kept at most; the least recently used client's is dropped first (memory stays
# bounded whatever the number of client addresses).
MAX_BUCKETS: Final = 10_000
# Of a body found too large, up to this much more is read and dropped before the 413: a
# server that closes with unread bytes in its socket resets the connection, and the client
# sees a reset instead of the 413. Past this the 413 goes out anyway and the connection
# closes (a client sending more has been told by Content-Length or is misbehaving).
DRAIN_BYTES: Final = 1024 * 1024

# What the guard may answer on any route, for the OpenAPI documents of the guarded apps
# (`FastAPI(responses=GUARD_RESPONSES)`), so clients and schema-driven tests expect them.
GUARD_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        "model": ErrorDetail,
        "description": "a token is needed (writes, and reads with auth_reads) or the one "
        "sent is not valid; see WWW-Authenticate",
    },
    403: {
        "model": ErrorDetail,
        "description": "no token is configured: writes (and guarded reads) are disabled",
    },
    413: {
        "model": ErrorDetail,
        "description": "the request body is larger than limits.max_body_bytes",
    },
    429: {
        "model": ErrorDetail,
        "description": "rate limit: retry after the Retry-After header's seconds",
    },
}


# -- rate ----------------------------------------------------------------------------------


class TokenBuckets:
    """Token buckets by key: `rate` tokens a second up to `burst`; bounded in number."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float], max_keys: int = MAX_BUCKETS
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 if a request of `key` may pass now (and it is counted), else the seconds until
        one may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        level, then = self._buckets.pop(key, (self.burst, now))
        level = min(self.burst, level + (now - then) * self.rate)
        wait = 0.0
        if level >= 1.0:
            level -= 1.0
        else:
            wait = (1.0 - level) / self.rate
        self._buckets[key] = (level, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


# -- the guard -----------------------------------------------------------------------------


class TooLarge(Exception):
    """The request body is larger than the API accepts."""


class ApiGuard:
    """Pure ASGI middleware: exempt paths, rate, token, body size, in that order.

    The rate comes before the token so that guessing tokens costs the guesser its bucket;
    the body is read (at most `max_body_bytes`) only once the request may pass, and replayed
    to the app, which therefore never sees an oversized body.
    """

    def __init__(
        self,
        app: Asgi,
        access: ApiAccess,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.access = access
        self.limits = access.limits
        self._tokens = [t.get_secret_value().encode() for t in access.tokens]
        self.reads = TokenBuckets(self.limits.read_rate_per_s, self.limits.read_burst, clock)
        self.writes = TokenBuckets(self.limits.write_rate_per_s, self.limits.write_burst, clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.limits.exempt_paths:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        write = method not in READ_METHODS
        headers = _headers(scope)
        client = scope.get("client")
        address = client[0] if client else "unknown"
        given = _presented(headers)
        which = None if given is None else self._match(given)
        who = address if which is None else f"token#{which + 1}"
        wait = (self.writes if write else self.reads).take(who)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            log.info("429 for %s %s from %s: rate limit", method, scope["path"], who)
            await problem(
                send,
                429,
                f"too many {'writes' if write else 'reads'} from this client; retry in "
                f"{retry} s (limits.{'write' if write else 'read'}_rate_per_s)",
                {"retry-after": str(retry)},
            )
            return
        if write or self.access.auth_reads:
            refused = self._refusal(write, given, which)
            if refused is not None:
                status, detail = refused
                log.info("%d for %s %s from %s", status, method, scope["path"], address)
                extra = {"www-authenticate": 'Bearer realm="linepulse"'} if status == 401 else {}
                await problem(send, status, detail, extra)
                return
        await self._with_body_limit(scope, receive, send, headers)

    def _match(self, given: bytes) -> int | None:
        """The position of the token `given` among the configured ones; every token is
        compared (no early exit), each in constant time."""
        found = None
        for index, token in enumerate(self._tokens):
            if hmac.compare_digest(given, token):
                found = index
        return found

    def _refusal(
        self, write: bool, given: bytes | None, which: int | None
    ) -> tuple[int, str] | None:
        what = "writes" if write else "reads"
        if not self._tokens:
            hint = self.access.configure_hint
            return 403, f"{what} are disabled: no API token is configured; {hint}"
        if given is None:
            return 401, (
                f"{what} need a token: send 'Authorization: Bearer <token>' or 'X-API-Key: <token>'"
            )
        if which is None:
            return 401, "the token is not valid; check it with whoever runs this API"
        return None

    async def _with_body_limit(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes]
    ) -> None:
        limit = self.limits.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            if int(declared) <= DRAIN_BYTES:
                await _discard(receive, DRAIN_BYTES)
            await _too_large(send, limit)
            return
        try:
            body = await _read_body(receive, limit)
        except TooLarge:
            await _discard(receive, DRAIN_BYTES)
            await _too_large(send, limit)
            return
        if body is None:  # the client went away
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def install(app: Any, access: ApiAccess, clock: Callable[[], float] = time.monotonic) -> None:
    """Guard the Starlette/FastAPI `app` with `access`; CORS (if any origin is allowed)
    sits outside the guard, so preflights are answered without a token and refusals
    still carry CORS headers a browser can read."""
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(ApiGuard, access=access, clock=clock)
    if access.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(access.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After", "WWW-Authenticate"],
            max_age=600,
        )


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", ())}


def _presented(headers: dict[bytes, bytes]) -> bytes | None:
    """The token the request carries, from `Authorization: Bearer` or `X-API-Key`."""
    authorization = headers.get(b"authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            return value.strip()
    key = headers.get(b"x-api-key")
    if key is not None and key.strip():
        return key.strip()
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _discard(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request body, at most `budget` bytes of it."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _too_large(send: Send, limit: int) -> None:
    await problem(
        send,
        413,
        f"the request body is larger than {limit} bytes (limits.max_body_bytes)",
        {"connection": "close"},
    )


async def problem(send: Send, status: int, detail: str, extra: Mapping[str, str]) -> None:
    """Answer `{"detail": ...}` with `status` and the `extra` headers, as every refusal of
    the APIs is shaped (other ASGI middleware answers with it too)."""
    body = orjson.dumps({"detail": detail})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.encode(), value.encode()) for name, value in extra.items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
