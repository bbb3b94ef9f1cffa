"""The KPI query API: current figures, history, machine states, the downtime Pareto,
Prometheus metrics and health checks, over HTTP.

`create_app(plant, store, registry)` builds the app from what `main` opened; nothing is
built at import time. The lifespan owns what the app itself starts (the optional
`lifespan_extra`, e.g. the lead's Kafka materializer, and the producer of reason
corrections) through one `AsyncExitStack`; the store and the registry belong to the
caller and are neither closed nor reset here. Stops, reason trees and corrections are in
services/kpi/stops_api.py.

Endpoints are plain `def`s: FastAPI runs them in its threadpool, so a DuckDB query never
blocks the event loop; the store opens a cursor per call, which makes that safe.
KPI records are served exactly as the record contract (schemas/kpi-record.schema.json),
serialised with orjson straight from the store (the `response_model` documents them).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from zoneinfo import ZoneInfo

import orjson
from fastapi import FastAPI, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field

from linepulse.bus import AIOKAFKA, KafkaClients
from linepulse.calendar import Calendar, ShiftSpan
from linepulse.config import PlantConfig, State, WindowKind
from linepulse.costs import Pricing
from linepulse.http.api import create_api, errors_of_a_text_route, metrics_response
from linepulse.http.guard import GUARD_RESPONSES, install
from linepulse.http.settings import ApiAccess
from linepulse.pdf import Printer
from linepulse.records import KpiRecord
from linepulse.report_page import pdf_name
from linepulse.spc_chart import fixed
from linepulse.spc_stream import chart_summary, point_of
from services.kpi.board.board import mount_board  # live board (issue 6)
from services.kpi.current import Scope
from services.kpi.errors import BadRequest, NotFound
from services.kpi.handover import fetch_handover
from services.kpi.history import KpiHistory
from services.kpi.money import budget_view, losses_cost, month_start, reached
from services.kpi.plant_report import WINDOW_OF, Period, PlantPeriod, plant_report
from services.kpi.plant_report import render_html as render_plant_html
from services.kpi.shift_report import render_html, shift_report
from services.kpi.stops import CODE_STATES
from services.kpi.stops_api import CorrectionProducer, stops_router
from services.kpi.store import KpiStore
from services.kpi.trends import PROJECTION_WEEKS, trends

# The window kind the Pareto sums: 1h if computed (see KpiHistory.pareto), else the next.
ReportFormat = Literal["json", "html", "pdf"]
ReportDate = Annotated[str, Query(alias="date", description="production day, local (YYYY-MM-DD)")]
ReportFormatParam = Annotated[ReportFormat, Query(alias="format", description="json, html or pdf")]
# What a report route answers with, by its `format`.
_REPORT_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"content": {"application/json": {}, "text/html": {}, "application/pdf": {}}}
}
_PARETO_KINDS: Final[tuple[WindowKind, ...]] = ("1h", "15m", "1m", "day", "shift")
_RFC3339: Final = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
# A '+' in a query string that was not sent as %2B arrives as a space.
_SPACE_OFFSET: Final = re.compile(r"(:\d{2}(?:\.\d+)?) (\d{2}:\d{2})$")
_EPOCH_MS: Final = re.compile(r"^-?\d{1,15}$")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_SPC_LAST: Final = 1440  # subgroups a chart's `last` may ask for (a day at one a minute)
# Stops without a reason a plant report counts at most (a week of a large plant's).
MAX_PLANT_STOPS: Final = 1_000_000
_TIME_HELP: Final = (
    "RFC 3339 with an offset (2026-11-02T06:00:00Z or 2026-11-02T07:00:00%2B01:00) or "
    "epoch milliseconds (Grafana's ${__from})"
)

DESCRIPTION: Final = """\
OEE, yield and downtime of a plant's machines and lines, per window (`1m`, `15m`, `1h`,
`shift`, `day`), in event time. Field definitions: the project README ("KPI
definitions") and `schemas/kpi-record.schema.json`.

- Times are RFC 3339 in UTC with a `Z` in responses; query times take any offset
  (send `+` as `%2B`) or epoch milliseconds.
- Ratios are fractions (0.75 = 75 %) and `null` when their denominator is zero.
- A line record aggregates its machines and has `machine: null`.
- Errors are `{"detail": "..."}` (the alerts API's too): 404 for a line or machine the
  plant does not have, 422 for a parameter that cannot be used; the message says what
  to do next.
- This page works offline: Swagger UI is served by the API itself (`/docs`, `/redoc`).
- Writes (`POST /v1/stops/{id}/reason`) need a token, sent as `Authorization: Bearer
  <token>` or `X-API-Key: <token>` (`api.token_env` / `api.token_file` in the plant
  config); reads need one only with `api.auth_reads`. 401: missing or wrong token; 403:
  no token configured; 413: body over `api.limits.max_body_bytes`; 429: rate limit, see
  `Retry-After`.
"""


# Query parameters shared by the endpoints (module level: FastAPI resolves annotations
# in the module's namespace).
LineParam = Annotated[
    str | None, Query(description="a line id (`lines[].id`); all lines if left out")
]
MachineParam = Annotated[
    str | None, Query(description="a machine id; all machines (and lines) if left out")
]
FromParam = Annotated[
    str | None, Query(alias="from", description=f"start, inclusive: {_TIME_HELP}")
]
ToParam = Annotated[str | None, Query(description=f"end, exclusive: {_TIME_HELP}")]
ScopeParam = Annotated[
    Scope,
    Query(
        description="`all`: machine and line records; `machine`: machines only; "
        "`line`: line records only"
    ),
]


class MachineStatus(BaseModel):
    """A configured machine and its last known state (null where none is known yet)."""

    machine: str
    line: str
    state: State | None = Field(description="state of the latest `state` sample")
    reason: str | None = Field(default=None, description="that sample's reason code")
    since: str | None = Field(description="when that state began, RFC 3339 UTC")
    last_seen: str | None = Field(description="time of the machine's latest sample, RFC 3339")


class ParetoEntry(BaseModel):
    reason: str = Field(description="downtime reason code (`unassigned` without one)")
    seconds: float = Field(ge=0, description="downtime in seconds, to the millisecond")
    share: float = Field(ge=0, le=1, description="fraction of all downtime in the result")


class Pareto(BaseModel):
    """Downtime by reason over a range that the answer states, so that an empty list
    says "no downtime from .. to .." rather than nothing."""

    line: str | None = Field(description="the line asked for; null: every line")
    from_: str | None = Field(
        alias="from", description="start of the range, inclusive, RFC 3339 UTC; null: open"
    )
    to: str | None = Field(description="end of the range, exclusive, RFC 3339 UTC; null: open")
    shift: str | None = Field(
        description="the current shift the range defaulted to (no `from` and `to` given); "
        "null for a range given, or lines on different shifts"
    )
    window: WindowKind = Field(description="the window kind summed (windows count whole)")
    includes_open_window: bool = Field(
        description="a window of the range is still open and counted with its figures so "
        "far: the answer will still grow"
    )
    reasons: list[ParetoEntry] = Field(description="largest first")


class TrendFigures(BaseModel):
    """Sums over the days of a scope, and the ratios computed from the sums (never an
    average of daily ratios)."""

    planned_s: float
    run_s: float
    total_count: int
    good_count: int
    reject_count: int
    output_count: int | None = Field(description="good parts of the lines' output machines")
    output_per_planned_h: float | None
    availability: float | None
    performance: float | None
    quality: float | None
    oee: float | None


class TrendDay(TrendFigures):
    date: str = Field(description="production day, local to the plant (ISO 8601 date)")
    final: bool = Field(description="every record of the day is final")


class TrendLoss(BaseModel):
    loss: str = Field(description="loss category (equipment_failure, setup, small_stops, ...)")
    seconds: float
    share: float = Field(description="of all losses of the week")


class TrendReason(BaseModel):
    reason: str
    seconds: float


class TrendWeek(TrendFigures):
    week: str = Field(description="ISO week, e.g. 2026-W45")
    start: str = Field(description="its Monday (ISO 8601 date)")
    days: int = Field(description="production days stored in it")
    complete: bool = Field(description="7 days, all final")
    top_losses: list[TrendLoss]
    top_reasons: list[TrendReason] = Field(description="downtime reasons, largest first")
    change: dict[str, float | None] | None = Field(
        description="against the week before: ratios in points (0.02 = 2 points), output "
        "per planned hour, and output (only when both weeks are complete); null for the "
        "first week stored"
    )


class Projection(BaseModel):
    week: str
    start: str
    planned_s: float = Field(description="planned time of that week from the shift calendar")
    output_count: float | None = Field(description="projected good parts of the output")
    output_per_planned_h: float | None = Field(description="the rate it is projected at")
    based_on: dict[str, Any] = Field(description="the final days the rate comes from")
    method: str = Field(description="how the projection is made, in words")


class Trends(BaseModel):
    """A line's (or the plant's) days and weeks, newest last, and the coming week."""

    line: str | None = Field(description="the line asked for; null: the plant (every line)")
    timezone: str
    through: str | None = Field(description="the newest production day stored")
    days: list[TrendDay]
    weeks: list[TrendWeek]
    projection: Projection | None


class ReasonCost(BaseModel):
    reason: str
    cost: float
    seconds: float


class MachineCost(BaseModel):
    machine: str
    line: str
    cost: float


class LineCost(BaseModel):
    line: str
    cost: float


class CostAnswer(BaseModel):
    """The losses of a range in money; it states its range as the Pareto does."""

    line: str | None
    from_: str | None = Field(alias="from")
    to: str | None
    shift: str | None
    window: WindowKind
    includes_open_window: bool
    currency: str
    total: float = Field(description="the six big losses in money")
    by_category: dict[str, float] = Field(description="per loss category")
    downtime: float = Field(description="equipment failure and setup: what the reasons split")
    by_reason: list[ReasonCost] = Field(description="downtime by reason, largest first")
    by_machine: list[MachineCost]
    by_line: list[LineCost]
    unpriced_machines: list[str] = Field(
        description="machines whose losses cannot be priced (no ideal cycle time)"
    )


class BudgetAnswer(BaseModel):
    line: str | None
    currency: str
    month: str
    from_: str = Field(alias="from")
    data_from: str = Field(
        description="the first record of the month: the projection's rate runs from here"
    )
    through: str
    cost: float
    by_category: dict[str, float]
    budget: float | None
    share_of_budget: float | None
    planned_s: float
    month_planned_s: float
    projected: float | None
    on_track: bool | None
    oee: float | None
    oee_target: float | None
    method: str
    unpriced_machines: list[str]


class Health(BaseModel):
    status: Literal["ok", "ready", "not ready"]
    detail: str | None = None


def create_app(
    plant: PlantConfig,
    store: KpiStore,
    registry: CollectorRegistry,
    *,
    ready: Callable[[], bool] = lambda: True,
    lifespan_extra: Callable[[FastAPI], AbstractAsyncContextManager[object]] | None = None,
    alerts_url: str | None = None,  # live board (issue 6): the alerts API the board calls
    bootstrap: str | None = None,
    clients: KafkaClients = AIOKAFKA,
    access: ApiAccess | None = None,
    reasons_read: Callable[[], Awaitable[None]] | None = None,
    printer: Printer | None = None,
) -> FastAPI:
    """The KPI API for `plant`, reading `store`, exposing `registry` on `/metrics`.

    `ready` says whether the served figures are caught up (e.g. the materializer has
    reached the end of the `kpi` topic); `/readyz` answers 503 until it returns True.
    `lifespan_extra(app)`, if given, is entered when the app starts and exited when it
    stops, inside the app's `AsyncExitStack` (start background work there).
    `bootstrap` (with `clients`, aiokafka's or the in-process bus's) is the broker that
    reason corrections are sent through; without it `POST /v1/stops/{id}/reason` answers
    503. `access` (tokens, limits, CORS; `plant.api.resolve("api")` in a service) guards
    every route; without it no token is configured, so reads are open and writes are
    refused with 403. `reasons_read` (the materializer's) returns once the corrections
    made on other replicas have been read: a correction waits for it before it is
    numbered. `printer` prints the shift report's PDF (`format=pdf`); by default the
    Chromium `linepulse.pdf.find_browser` finds, if any.
    """
    lines = {line.id: line for line in plant.lines}
    machines = {m: line.id for m, (line, _) in plant.machines().items()}
    windows = tuple(plant.kpi.windows)
    pareto_kind: WindowKind = next((k for k in _PARETO_KINDS if k in windows), "1h")
    calendar = Calendar(plant)
    pricing = Pricing(plant)
    printer = printer or Printer.found()
    producer = None if bootstrap is None else CorrectionProducer(plant, bootstrap, clients)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if producer is not None:
                stack.push_async_callback(producer.close)
            if lifespan_extra is not None:
                await stack.enter_async_context(lifespan_extra(app))
            yield

    app = create_api(
        title="LinePulse KPI API",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=GUARD_RESPONSES,
        openapi_tags=[
            {"name": "kpis", "description": "KPI records per machine and line"},
            {"name": "plant", "description": "machines and downtime"},
            {"name": "stops", "description": "stops, reason trees and reason corrections"},
            {"name": "money", "description": "losses in money, and the month against budget"},
            {"name": "reports", "description": "shift reports"},
            {"name": "operations", "description": "metrics and health checks"},
        ],
    )
    install(app, access or ApiAccess())

    def check_scope(line: str | None, machine: str | None, scope: Scope = "all") -> None:
        if line is not None and line not in lines:
            raise NotFound(f"unknown line {line!r}; GET /v1/machines lists lines and machines")
        if machine is None:
            return
        if machine not in machines:
            raise NotFound(f"unknown machine {machine!r}; GET /v1/machines lists them")
        if line is not None and machines[machine] != line:
            raise NotFound(
                f"machine {machine!r} is on line {machines[machine]!r}, not {line!r}; "
                "GET /v1/machines lists machines by line"
            )
        if scope == "line":
            raise BadRequest(
                "scope=line returns line records, which have no machine; "
                "drop machine= or use scope=machine"
            )

    def shift_or_range(
        line: str | None, from_: str | None, to: str | None
    ) -> tuple[datetime | None, datetime | None, str | None]:
        """[from, to) as asked, or without either the current shift (and its name)."""
        start = None if from_ is None else _time(from_, "from")
        end = None if to is None else _time(to, "to")
        if start is not None and end is not None:
            _ordered(start, end)
        check_scope(line, None)
        if from_ is None and to is None:
            return _current_shift(store.history, line, windows)
        return start, end, None

    def range_said(
        line: str | None,
        start: datetime | None,
        end: datetime | None,
        shift: str | None,
        still_open: bool,
    ) -> dict[str, Any]:
        """What an answer over a range says of it (the Pareto's and the costs')."""
        return {
            "line": line,
            "from": _utc(start),
            "to": _utc(end),
            "shift": shift,
            "window": pareto_kind,
            "includes_open_window": still_open,
        }

    def check_priced() -> None:
        if not pricing.configured:
            raise BadRequest(
                "no costs are configured: set costs.downtime_minute_cost, good_part_value "
                "or scrap_part_cost in the plant config (docs/costs.md)"
            )

    def check_window(window: WindowKind | None) -> None:
        if window is not None and window not in windows:
            raise BadRequest(
                f"window {window!r} is not computed for this plant; use one of "
                f"{', '.join(windows)} (kpi.windows in the plant config)"
            )

    @app.get(
        "/v1/kpis/current",
        response_model=list[KpiRecord],
        tags=["kpis"],
        summary="Current KPIs per machine and line",
        description=(
            "Per machine and line, the record of its newest open window of the given kind "
            "(`final` false). Where none is open (between shifts, or a machine that stopped "
            "sending), its most recent window instead, final. Ordered by line, its "
            "machines, then the line record."
        ),
    )
    def current(
        line: LineParam = None,
        machine: MachineParam = None,
        window: Annotated[WindowKind, Query(description="window kind")] = "shift",
        scope: ScopeParam = "all",
    ) -> Response:
        check_scope(line, machine, scope)
        check_window(window)
        return _json(store.history.current(line, machine, window, scope=scope))

    @app.get(
        "/v1/kpis/history",
        response_model=list[KpiRecord],
        tags=["kpis"],
        summary="KPI records over a time range",
        description=(
            "Records whose window starts in [from, to), ordered by window_start, line, "
            "machine (each line record after its machines), then window kind. Each key "
            "appears once, with its latest revision."
        ),
    )
    def history(
        from_: Annotated[str, Query(alias="from", description=f"start, inclusive: {_TIME_HELP}")],
        to: Annotated[
            str | None, Query(description=f"end, exclusive: {_TIME_HELP}; open if left out")
        ] = None,
        window: Annotated[
            WindowKind | None, Query(description="window kind; all kinds if left out")
        ] = None,
        line: LineParam = None,
        machine: MachineParam = None,
        scope: ScopeParam = "all",
    ) -> Response:
        start, end = _range(from_, to)
        check_scope(line, machine, scope)
        check_window(window)
        return _json(store.history.history(start, end, window, line, machine, scope=scope))

    @app.get(
        "/v1/machines",
        response_model=list[MachineStatus],
        tags=["plant"],
        summary="Configured machines and their current state",
        description="Every machine of the plant config, in config order.",
    )
    def list_machines() -> Response:
        return _json(store.status.machines())

    @app.get(
        "/v1/downtime/pareto",
        response_model=Pareto,
        tags=["plant"],
        summary="Downtime by reason, largest first, over the current shift by default",
        description=(
            "Downtime seconds per reason, summed over the machine records (not lines) of "
            f"`{pareto_kind}` windows whose start lies in [from, to); one window kind, so "
            "each second counts once. Without `from` and `to`: the current shift (of "
            "`line`, or the span of every line's current shift). Open windows count with "
            "their figures so far unless `closed_only=true`. The answer states its range "
            "(`from`, `to`, `shift`) and whether an open window is in it."
        ),
    )
    def pareto(
        line: LineParam = None,
        from_: FromParam = None,
        to: ToParam = None,
        closed_only: Annotated[
            bool, Query(description="only windows that have closed (final figures)")
        ] = False,
    ) -> Response:
        start, end, shift = shift_or_range(line, from_, to)
        include_open = not closed_only
        reasons = store.history.pareto(
            line, start, end, window=pareto_kind, include_open=include_open
        )
        still_open = (
            include_open and store.history.open_windows(line, start, end, window=pareto_kind) > 0
        )
        return _json({**range_said(line, start, end, shift, still_open), "reasons": reasons})

    @app.get(
        "/v1/trends",
        response_model=Trends,
        tags=["kpis"],
        summary="OEE, output and the top losses per day and ISO week, and next week projected",
        description=(
            "From the `day` line records: per production day and per ISO week (the newest "
            "`weeks` of them) the summed times and counts, the ratios computed from the "
            "sums, the largest losses and downtime reasons, and the change against the week "
            "before; and the coming week's output projected from the recent output per "
            "planned hour and the planned hours of the shift calendar. Without `line`: the "
            "plant, every line summed. 'Now' is the newest day stored."
        ),
    )
    def trend(
        line: LineParam = None,
        weeks: Annotated[int, Query(ge=1, le=53, description="ISO weeks to show")] = 4,
    ) -> Response:
        check_scope(line, None)
        if "day" not in windows:
            raise BadRequest(
                "trends are built from `day` records, which this plant does not compute; "
                "add day to kpi.windows in the plant config"
            )
        newest = store.history.current(line, None, "day", scope="line")
        records: list[dict[str, Any]] = []
        if newest:
            latest = max(datetime.fromisoformat(r["window_start"]) for r in newest)
            # The weeks shown, the week before them (for its change) and the projection's
            # basis, with a day to spare for the week's start.
            back = timedelta(weeks=max(weeks + 1, PROJECTION_WEEKS), days=8)
            records = store.history.history(latest - back, None, "day", line, scope="line")
        scope_lines = [line] if line is not None else list(lines)
        return _json(trends(records, calendar, scope_lines, weeks, line))

    live_charts = {chart.name: chart for chart in plant.spc if chart.limits is not None}

    def charts_over(
        line: str | None,
        chart: str | None,
        start: datetime | None,
        end: datetime | None,
        last: int | None = None,
    ) -> list[dict[str, Any]]:
        """Each control chart of `line` (or `chart`, or all) over [start, end) (with
        `last`, its last that many subgroups there): its summary (`chart_summary`) and its
        subgroups, from the spc topic."""
        names = [
            name
            for name, each in live_charts.items()
            if (line is None or machines[each.machine] == line) and chart in (None, name)
        ]
        by_chart: dict[str, list[dict[str, Any]]] = {}
        for record in store.spc.points(line=line, chart=chart, start=start, end=end, last=last):
            by_chart.setdefault(record["chart"], []).append(record)
        out = []
        for name in names:
            each, points = live_charts[name], by_chart.get(name, [])
            assert each.limits is not None  # noqa: S101 - live charts have fixed limits
            limits = fixed(each.chart, each.limits, each.size)
            out.append(
                {
                    **chart_summary(each, [point_of(record) for record in points]),
                    "machine": each.machine,
                    "signal": each.signal,
                    "line": machines[each.machine],
                    "kind": each.chart,
                    "limits": {"center": limits.center, "ucl": limits.ucl, "lcl": limits.lcl},
                    "points": points,
                }
            )
        return out

    @app.get(
        "/v1/spc",
        tags=["quality"],
        summary="Control charts: each chart's subgroups and their summary over a time range",
        description=(
            "The subgroups of the plant's control charts (`spc:` with fixed limits) that "
            "ended in [from, to), as the KPI worker put them on the spc topic "
            "(docs/spc.md): statistics, values, the rules each broke and the limits; per "
            "chart, how many broke each rule and capability (Cp, Cpk, Pp, Ppk with a "
            "`spec`). Without `from` and `to`: the current shift, as the Pareto; with "
            "`last` instead, each chart's last subgroups whatever the shift (the board's)."
        ),
    )
    def spc_points(
        line: LineParam = None,
        chart: Annotated[
            str | None, Query(description="a chart, `machine/signal`; all if left out")
        ] = None,
        from_: FromParam = None,
        to: ToParam = None,
        last: Annotated[
            int | None,
            Query(
                ge=1,
                le=MAX_SPC_LAST,
                description="each chart's last N subgroups (in [from, to) if given; "
                "without either, whatever the shift)",
            ),
        ] = None,
    ) -> Response:
        if chart is not None and chart not in live_charts:
            said = ", ".join(live_charts) or "none"
            raise NotFound(f"no chart {chart!r} with fixed limits in spc: (there are: {said})")
        if last is not None and from_ is None and to is None:
            check_scope(line, None)
            start, end, shift = None, None, None
        else:
            start, end, shift = shift_or_range(line, from_, to)
        return _json(
            {
                "from": _utc(start),
                "to": _utc(end),
                "shift": shift,
                "charts": charts_over(line, chart, start, end, last),
            }
        )

    @app.get(
        "/v1/costs",
        response_model=CostAnswer,
        tags=["money"],
        summary="What the losses cost, by category, reason, machine and line",
        description=(
            "The six big losses of the machine records of `"
            + pareto_kind
            + "` windows whose start lies in [from, to), in money (docs/costs.md): each "
            "record priced at its machine's and product's rates, every total a sum of "
            "those, so reasons, machines and lines reconcile. Without `from` and `to`: the "
            "current shift, as the Pareto. 422 when the plant config sets no rates."
        ),
    )
    def costs(line: LineParam = None, from_: FromParam = None, to: ToParam = None) -> Response:
        check_priced()
        start, end, shift = shift_or_range(line, from_, to)
        records = store.history.history(
            start or _EPOCH, end, pareto_kind, line, None, scope="machine"
        )
        still_open = any(not r["final"] for r in records)
        return _json(
            {**range_said(line, start, end, shift, still_open), **losses_cost(records, pricing)}
        )

    @app.get(
        "/v1/costs/budget",
        response_model=BudgetAnswer,
        tags=["money"],
        summary="The month so far: loss cost against the budget, projected to the month's end",
        description=(
            "Month to date (the month of the newest record, from its first production day): "
            "the losses' cost, the budget (`costs.budget.monthly_loss` of the line, or of "
            "the plant without `line`) and its share spent, the cost projected to the "
            "month's end over the planned time of the shift calendar, and the month's OEE "
            "(from the `day` records) against `oee_target`."
        ),
    )
    def budget(line: LineParam = None) -> Response:
        check_priced()
        check_scope(line, None)
        latest = store.history.current(line, None, pareto_kind, scope="machine")
        now = reached(latest)
        if now is None:
            raise NotFound("no KPI records stored yet: nothing has been spent this month")
        day = now.astimezone(calendar.zone).date()
        start = month_start(day, calendar)
        if start > now:  # before the day start on the 1st: the month before
            start = month_start(day - timedelta(days=1), calendar)
        records = store.history.history(start, None, pareto_kind, line, None, scope="machine")
        days = (
            store.history.history(start, None, "day", line, None, scope="line")
            if "day" in windows
            else []
        )
        scope_lines = [line] if line is not None else list(lines)
        return _json(budget_view(records, days, pricing, calendar, scope_lines, line, start, now))

    def build_shift_report(line: str, date_: str, shift: str) -> tuple[ShiftSpan, dict[str, Any]]:
        """The report's figures from the store (DuckDB: run in a worker thread)."""
        if "shift" not in windows:
            raise BadRequest("shift reports need `shift` records: add shift to kpi.windows")
        try:
            day = date.fromisoformat(date_)
        except ValueError:
            raise BadRequest(f"'date' must be YYYY-MM-DD, got {date_!r}") from None
        span = _span(calendar, line, day, shift)
        records = _shift_records(store.history, span)
        line_record = next((r for r in records if r["machine"] is None), None)
        if line_record is None:
            raise NotFound(
                f"no record of the {shift} shift of {line} on {day} yet: it has not started, "
                "or no data of it has reached the API"
            )
        earlier = []
        for weeks in range(1, 5):
            before = day - timedelta(weeks=weeks)
            spans = [s for s in calendar.spans_on(line, before) if s.name == shift]
            found = _shift_records(store.history, spans[0]) if spans else []
            earlier.append((before, next((r for r in found if r["machine"] is None), None)))
        stops = store.stops.query(
            line=line,
            since=datetime.fromtimestamp(span.start / 1000, UTC) - timedelta(days=1),
            until=datetime.fromtimestamp(span.end / 1000, UTC),
            limit=10_000,
        )
        machine_records = [r for r in records if r["machine"] is not None]
        report = shift_report(pricing, span, line_record, machine_records, earlier, stops)
        shift_start = datetime.fromtimestamp(span.start / 1000, UTC)
        shift_end = datetime.fromtimestamp(span.end / 1000, UTC)
        report["process_control"] = [
            {key: value for key, value in chart.items() if key != "points"}
            for chart in charts_over(line, None, shift_start, shift_end)
        ]
        return span, report

    @app.get(
        "/v1/reports/shift",
        tags=["reports"],
        summary="The shift report of a line: JSON, an HTML page for mail, or a PDF",
        description=(
            "One shift of one line (docs/reports.md): output against target and against "
            "the same shift of the four weeks before; OEE and its factors with the share of "
            "planned time with data; where the time went, in time and (with rates) money; "
            "downtime by reason, unplanned and planned apart; the longest stops with who "
            "coded them, and those still without a reason; bottleneck, scrap and rework; "
            "with `--alerts-url`, the shift's notes and alerts from the alerts API. "
            "`format=html` gives a self-contained page a mail client shows as it is; "
            "`format=pdf` that page printed to A4 by a headless Chromium (501 where the "
            "API has none)."
        ),
        responses=_REPORT_RESPONSES,
    )
    async def shift_report_answer(
        line: Annotated[str, Query(description="a line id (`lines[].id`)")],
        date_: ReportDate,
        shift: Annotated[str, Query(description="the shift's name (`shifts[].name`)")],
        format_: ReportFormatParam = "json",
        handover: Annotated[
            bool,
            Query(
                description="add the shift's notes and alerts from the alerts API "
                "(`--alerts-url`); the mailed report adds its own and asks without"
            ),
        ] = True,
    ) -> Response:
        check_scope(line, None)
        span, report = await run_in_threadpool(build_shift_report, line, date_, shift)
        if handover and alerts_url is not None:
            report = {**report, **await fetch_handover(alerts_url, line, date_, shift)}
        return await answer_report(report, format_, render_html, pdf_name("shift", span.slug))

    async def answer_report(
        report: dict[str, Any],
        format_: ReportFormat,
        render: Callable[[dict[str, Any], str, ZoneInfo], str],
        file_name: str,
    ) -> Response:
        """A report as JSON, as its page, or as the page printed to PDF."""
        if format_ == "json":
            return _json(report)
        page = render(report, plant.site, plant.zone)
        if format_ == "html":
            return HTMLResponse(page)
        pdf = await printer.pdf(page)
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'inline; filename="{file_name}"'},
        )

    def build_plant_report(
        period: Period, date_: str, shift: str | None
    ) -> tuple[PlantPeriod, dict[str, Any]]:
        """The plant report's figures from the store (DuckDB: run in a worker thread)."""
        kind = WINDOW_OF[period]
        if kind not in windows:
            raise BadRequest(
                f"a plant report of a {period} needs `{kind}` records: add {kind} to kpi.windows"
            )
        try:
            day = date.fromisoformat(date_)
        except ValueError:
            raise BadRequest(f"'date' must be YYYY-MM-DD, got {date_!r}") from None
        covered, records = _plant_records(store.history, calendar, list(lines), period, day, shift)
        if not any(r["machine"] is None for r in records):
            raise NotFound(
                f"no record of the {covered.label} yet: it has not started, or no data of it "
                "has reached the API"
            )
        waiting = store.stops.query(  # those begun the day before may run into the period
            since=datetime.fromtimestamp(covered.start / 1000, UTC) - timedelta(days=1),
            until=datetime.fromtimestamp(covered.end / 1000, UTC),
            unassigned=True,
            states=CODE_STATES,
            limit=MAX_PLANT_STOPS,
        )
        return covered, plant_report(pricing, covered, list(lines), records, waiting)

    @app.get(
        "/v1/reports/plant",
        tags=["reports"],
        summary="The plant report of a shift, a production day or an ISO week",
        description=(
            "Every line side by side (docs/reports.md): OEE and its factors, output against "
            "target, the top stop reason and the losses in money, and the plant's figures: "
            "its sums (ratios from the sums, never a mean of ratios), where its time went "
            "and downtime by reason over all lines. `period=shift` needs `shift`; "
            "`period=week` covers the ISO week of `date`. `format` as for the shift report."
        ),
        responses=_REPORT_RESPONSES,
    )
    async def plant_report_answer(
        date_: ReportDate,
        period: Annotated[Period, Query(description="shift, day or week")] = "day",
        shift: Annotated[
            str | None, Query(description="the shift's name, for period=shift")
        ] = None,
        format_: ReportFormatParam = "json",
    ) -> Response:
        check_scope(None, None)
        covered, report = await run_in_threadpool(build_plant_report, period, date_, shift)
        return await answer_report(
            report, format_, render_plant_html, pdf_name("plant", covered.slug)
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses=errors_of_a_text_route(),
        description="Prometheus text exposition format (KPI gauges and service health).",
    )
    def metrics() -> Response:
        return metrics_response(registry)

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["operations"],
        summary="Liveness: 200 while the process runs",
    )
    def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        tags=["operations"],
        summary="Readiness: 200 when the figures are caught up and the store answers",
        responses={503: {"model": Health, "description": "not ready; `detail` says why"}},
    )
    def readyz() -> JSONResponse:
        reason = _not_ready(ready, store)
        if reason is not None:
            body = Health(status="not ready", detail=reason).model_dump()
            return JSONResponse(body, status_code=503)
        return JSONResponse(Health(status="ready").model_dump())

    app.include_router(
        stops_router(
            plant,
            store.stops,
            store.status,
            producer,
            check_scope=check_scope,
            parse_time=_time,
            reasons_read=reasons_read,
        )
    )
    mount_board(app, plant, store, alerts_url)  # live board (issue 6): `/`, /v1/board/*
    return app


def _not_ready(ready: Callable[[], bool], store: KpiStore) -> str | None:
    try:
        if not ready():
            return (
                "the KPI figures are still catching up (the materializer has not reached "
                "the end of the kpi topic); retry in a few seconds"
            )
    except Exception as error:  # a failing check is an answer, not a crash
        return f"the readiness check failed: {error}"
    try:
        store.check()
    except Exception as error:
        return f"the KPI store cannot be queried: {error}"
    return None


def _current_shift(
    history: KpiHistory, line: str | None, windows: tuple[WindowKind, ...]
) -> tuple[datetime | None, datetime | None, str | None]:
    """[start, end) of the current shift of `line` (of every line: from the earliest
    start to the latest end) and its name (None if the lines are on different shifts),
    from the newest `shift` line records; (None, None, None), everything, where there
    is none (nothing stored yet, or `shift` windows not computed)."""
    if "shift" not in windows:
        return None, None, None
    records = history.current(line, None, "shift", scope="line")
    if not records:
        return None, None, None
    start = min(datetime.fromisoformat(r["window_start"]) for r in records)
    end = max(datetime.fromisoformat(r["window_end"]) for r in records)
    names = {r["shift"] for r in records}
    return start, end, names.pop() if len(names) == 1 else None


def _span(calendar: Calendar, line: str, day: date, shift: str) -> ShiftSpan:
    """The shift `shift` of `line` on production day `day`; 404 naming those there are."""
    spans = calendar.spans_on(line, day)
    for span in spans:
        if span.name == shift:
            return span
    there = ", ".join(s.name for s in spans) or "none (a day off, or no shift that weekday)"
    raise NotFound(f"line {line!r} has no shift {shift!r} on {day}; its shifts that day: {there}")


def _plant_records(
    history: KpiHistory,
    calendar: Calendar,
    lines: list[str],
    period: Period,
    day: date,
    shift: str | None,
) -> tuple[PlantPeriod, list[dict[str, Any]]]:
    """What a plant report of `period` covers and its records: each line's `shift`
    records of the shift `shift` on `day`, or the `day` records of the day or of its
    ISO week."""
    if period == "shift":
        if shift is None:
            raise BadRequest("a plant report of a shift needs `shift` (the shift's name)")
        spans = [s for line in lines for s in calendar.spans_on(line, day) if s.name == shift]
        if not spans:
            there = sorted({s.name for line in lines for s in calendar.spans_on(line, day)})
            said = ", ".join(there) or "none (a day off)"
            raise NotFound(f"no line has a shift {shift!r} on {day}; the shifts that day: {said}")
        covered = PlantPeriod(
            "shift", day, shift, min(s.start for s in spans), max(s.end for s in spans)
        )
        return covered, [r for span in spans for r in _shift_records(history, span)]
    first = day - timedelta(days=day.weekday()) if period == "week" else day
    after = first + timedelta(days=7 if period == "week" else 1)
    start, end = calendar.day_bounds(first)[0], calendar.day_bounds(after)[0]
    covered = PlantPeriod(period, first, None, start, end)
    records = history.history(
        datetime.fromtimestamp(start / 1000, UTC), datetime.fromtimestamp(end / 1000, UTC), "day"
    )
    return covered, records


def _shift_records(history: KpiHistory, span: ShiftSpan) -> list[dict[str, Any]]:
    """The `shift` records (line and machines) of the window that starts with `span`."""
    start = datetime.fromtimestamp(span.start / 1000, UTC)
    return history.history(start, start + timedelta(milliseconds=1), "shift", span.line)


def _utc(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, whole seconds where there is no fraction."""
    if moment is None:
        return None
    moment = moment.astimezone(UTC)
    spec = "seconds" if moment.microsecond == 0 else "milliseconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _json(body: Any) -> Response:
    return Response(orjson.dumps(body), media_type="application/json")


def _time(value: str, name: str) -> datetime:
    """A query time: RFC 3339 with an offset, or epoch milliseconds; aware, in UTC."""
    text = _SPACE_OFFSET.sub(r"\1+\2", value.strip())
    try:
        if _EPOCH_MS.match(text):
            return datetime.fromtimestamp(int(text) / 1000, UTC)
        if _RFC3339.match(text):
            return datetime.fromisoformat(text.upper()).astimezone(UTC)
    except (ValueError, OverflowError, OSError):
        pass
    raise BadRequest(f"{name!r} must be {_TIME_HELP}, got {value!r}")


def _range(start: str, end: str | None) -> tuple[datetime, datetime | None]:
    begin = _time(start, "from")
    if end is None:
        return begin, None
    finish = _time(end, "to")
    _ordered(begin, finish)
    return begin, finish


def _ordered(start: datetime, end: datetime) -> None:
    if start >= end:
        raise BadRequest(
            f"'from' ({start:%Y-%m-%dT%H:%M:%SZ}) must be before 'to' "
            f"({end:%Y-%m-%dT%H:%M:%SZ}); the range is [from, to)"
        )
