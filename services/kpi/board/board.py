"""The live board: a static page at `/` of the KPI API, and the feeds it reads.

- `GET /` serves `index.html`; `GET /board/board.js` and `/board/board.css` its script and
  style. Plain files shipped as package data (no build step, no CDN: a plant network
  often has no internet).
- `GET /v1/board/config`: where the alerts API is (`alerts_url`, None: no alerts panel)
  and the plant's time zone (`timezone`): the page shows plant time, not the browser's.
- Reason coding on the page calls `/v1/stops` and `/v1/reasons` of this same app (the
  CSP's `connect-src 'self'` covers them); the board adds no endpoint for it.
- `GET /v1/board/snapshot`: the snapshot (`snapshot.build_snapshot`) as JSON; the page
  polls it when server-sent events do not get through (a proxy that buffers them).
- `GET /v1/board/events`: server-sent events, one `snapshot` event at once and another
  whenever it changes, checked every `interval_s` (2 s); a `ping` event every 15 s
  without a change keeps idle connections open through proxies and tells the page that
  the stream is alive (else it falls back to polling).

Shutdown: uvicorn waits for open responses to finish before it runs the lifespan's
shutdown, so a stream cannot wait for the lifespan to tell it to stop. Each stream ends
when its client disconnects, when `Board.stop()` is called or the `stop_when` check says
so (wire it to `uvicorn.Server.should_exit`), and in any case after `max_stream_s`: the
browser's EventSource reconnects by itself and gets a fresh snapshot at once, so that
backstop costs the viewer nothing and bounds how long a shutdown can be held up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib.resources import files
from typing import Final
from urllib.parse import urlsplit

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from linepulse.config import PlantConfig
from services.kpi.board.snapshot import build_snapshot
from services.kpi.store import KpiStore

_ASSETS: Final = {
    "board.js": "text/javascript; charset=utf-8",
    "board.css": "text/css; charset=utf-8",
}
_POLL_S: Final = 0.25  # how often a stream checks for a disconnect or a stop
_KEEPALIVE_S: Final = 15.0


class Board:
    """The board's feeds over one store. Snapshots are shared by all streams: built at
    most once per `interval_s` (seconds), however many screens watch."""

    def __init__(
        self,
        plant: PlantConfig,
        store: KpiStore,
        alerts_url: str | None,
        *,
        interval_s: float = 2.0,
        max_stream_s: float = 30.0,
    ) -> None:
        self.plant = plant
        self.store = store
        self.alerts_url = alerts_url.rstrip("/") if alerts_url else None
        self.interval_s = interval_s
        self.max_stream_s = max_stream_s
        self._stopping = threading.Event()
        self._stop_when: Callable[[], bool] = lambda: False
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes] | None = None

    def stop(self) -> None:
        """End every open event stream (within `_POLL_S`) and refuse new ones."""
        self._stopping.set()

    def stop_when(self, check: Callable[[], bool]) -> None:
        """Also end streams once `check()` is true, e.g. `lambda: server.should_exit`."""
        self._stop_when = check

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set() or self._stop_when()

    def snapshot(self) -> bytes:
        """The current snapshot as JSON; rebuilt when older than `interval_s`. Blocking
        (DuckDB): call it from a worker thread."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.interval_s:
                self._cached = (now, orjson.dumps(build_snapshot(self.plant, self.store)))
            return self._cached[1]

    async def events(self, request: Request) -> AsyncIterator[bytes]:
        """The SSE stream of one client (see the module docstring for when it ends)."""
        yield f"retry: {int(self.interval_s * 1000)}\n\n".encode()
        started = last_sent = time.monotonic()
        previous: bytes | None = None
        while not self.stopping:
            body = await run_in_threadpool(self.snapshot)
            now = time.monotonic()
            if body != previous:
                yield b"event: snapshot\ndata: " + body + b"\n\n"
                previous, last_sent = body, now
            elif now - last_sent >= _KEEPALIVE_S:
                # An event, not a comment: the page's watchdog sees events only.
                yield b"event: ping\ndata: {}\n\n"
                last_sent = now
            if now - started >= self.max_stream_s:
                return
            deadline = now + self.interval_s
            while time.monotonic() < deadline:
                if self.stopping or await request.is_disconnected():
                    return
                await asyncio.sleep(_POLL_S)


def mount_board(app: FastAPI, plant: PlantConfig, store: KpiStore, alerts_url: str | None) -> Board:
    """Add the board's page and feeds to `app`; returns the `Board` (also `app.state.board`)
    so that whoever runs the server can `stop()` its streams or wire `stop_when`."""
    board = Board(plant, store, alerts_url)
    app.state.board = board
    package = files("services.kpi.board")
    index = (package / "index.html").read_bytes()
    assets = {name: (package / name).read_bytes() for name in _ASSETS}
    page_headers = {
        "Cache-Control": "no-cache",
        # Everything is served from here, except the calls to the alerts API.
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
            f"frame-ancestors 'none'; connect-src 'self'{_origin(board.alerts_url)}"
        ),
        "X-Content-Type-Options": "nosniff",
    }

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=page_headers)

    @app.get("/board/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in assets:
            return Response(status_code=404)
        return Response(assets[name], media_type=_ASSETS[name], headers=page_headers)

    @app.get(
        "/v1/board/config",
        tags=["board"],
        summary="Where the board finds the alerts API",
        description=(
            "`alerts_url`: base URL of the alerts API, or null (no alerts panel); "
            "`timezone`: the plant's IANA zone, in which the board shows every time."
        ),
    )
    def config() -> dict[str, str | float | None]:
        return {
            "alerts_url": board.alerts_url,
            "interval_s": board.interval_s,
            "timezone": plant.timezone,
        }

    @app.get(
        "/v1/board/snapshot",
        tags=["board"],
        summary="What the live board shows, per line",
        description=(
            "Per line: the current shift's KPIs (with the constraint's OEE, NEE, TEEP), "
            "its losses waterfall (planned time, the six big losses, fully productive "
            "time), bottleneck, output forecast against the target, machine states, "
            "downtime Pareto and OEE trend. See services/kpi/board/snapshot.py for the "
            "fields."
        ),
    )
    def snapshot() -> Response:
        return Response(board.snapshot(), media_type="application/json")

    @app.get(
        "/v1/board/events",
        tags=["board"],
        summary="The board snapshot as server-sent events",
        description=(
            "`event: snapshot` with the snapshot JSON at once and on every change "
            f"(checked every {board.interval_s:g} s). The stream ends after "
            f"{board.max_stream_s:g} s; EventSource reconnects by itself."
        ),
        response_class=StreamingResponse,
    )
    def events(request: Request) -> StreamingResponse:
        return StreamingResponse(
            board.events(request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return board


def _origin(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    return f" {parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""
