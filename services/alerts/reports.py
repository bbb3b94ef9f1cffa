"""Shift reports sent when a shift is over, once per shift and recipient, also across
restarts.

The active alerts instance looks at the shift calendar every `CHECK_EVERY_S`: every shift
of every line that ended at least `alerts.reports.after` ago (and not more than
`lookback` ago) is owed to its recipients (`alerts.reports.lines` for the line, else
`alerts.reports.to`: person ids, `next_lead`, the lead of the line's shift that follows,
and `manager`), on their channels that carry a report (email, Slack, webhook, console).
What is owed and not yet in the outbox is asked of the KPI API (`GET /v1/reports/shift`,
JSON and HTML), the shift's notes and alerts are added, the page is printed to PDF for the mail
(`linepulse.pdf`, where a headless Chromium is found), and it is enqueued, keyed
`report/{line}/{date}/{shift}/{channel}/{person}`.

Exactly once: the outbox is durable and ignores a key it has, so a restart (or a second
look) finds the report queued or sent and asks nothing; a shift whose record is not final
yet, or that the API cannot answer for now, is asked again at the next look, for as long
as `lookback` allows. Driven by the calendar, not by the `kpi` topic: a service that was
down when a shift ended still sends its report when it is back.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Final

import httpx

from linepulse.alerting import MANAGER, NEXT_LEAD, REPORT_CHANNELS, ShiftReports
from linepulse.calendar import Calendar, ShiftSpan, iso_week, ms_to_local_date, utc_text
from linepulse.config import PlantConfig
from linepulse.figures import count, percent
from linepulse.pdf import PdfError, Printer, no_browser_detail
from linepulse.report_charts import chart_page, charts_html, shift_charts
from linepulse.report_page import (
    CHARTS_MARK,
    handover_html,
    notes_text,
    pdf_name,
    process_control_text,
)
from linepulse.runtime import wait_set
from services.alerts.engine import KEEP_MS
from services.alerts.model import Alert, Notification
from services.alerts.outbox import Outbox
from services.alerts.routing import Duty

log = logging.getLogger(__name__)

CHECK_EVERY_S: Final = 30.0
REQUEST_TIMEOUT_S: Final = 30.0


def shift_key(span: ShiftSpan) -> str:
    """The outbox key of a line's shift report, less `/{channel}/{person}`."""
    return f"report/{span.line}/{span.day}/{span.name}"


def recipient_key(key: str, channel: str, person: str) -> str:
    """The outbox key of one recipient's copy of the report `key` on one channel."""
    return f"{key}/{channel}/{person}"


@dataclass(frozen=True)
class Due:
    """A report owed: which, where the KPI API gives it, and who has not got it yet."""

    key: str  # the outbox key without `/{channel}/{person}`
    group: str  # the outbox group: `report/{line}` or `report/plant`
    route: str  # /v1/reports/shift or /v1/reports/plant
    query: dict[str, str]
    name: str  # `line-1 early 2026-11-02`, `plant week 2026-W45`: subjects, files, logs
    span: ShiftSpan | None  # a line's shift (its alerts go in), None for a plant report
    todo: tuple[tuple[str, str], ...]  # (person, channel)
    pdf_name: str  # as the API names it (Content-Disposition)


class ShiftReportSender:
    """Owed shift reports into the outbox (see the module docstring)."""

    def __init__(
        self,
        plant: PlantConfig,
        settings: ShiftReports,
        outbox: Outbox,
        *,
        alerts: Callable[[str], list[Alert]] = lambda line: [],
        notes: Callable[[str, date, str], list[dict[str, Any]]] = lambda line, day, shift: [],
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
        printer: Printer | None = None,
    ) -> None:
        self.plant = plant
        self.settings = settings
        self.outbox = outbox
        self.alerts = alerts  # a line's alerts, open and recently resolved (the engine's)
        self.notes = notes  # a shift's notes (services/alerts/notes.py)
        self.duty = Duty(plant)
        self.calendar: Calendar = self.duty.calendar
        self._clock = clock
        self._client = client
        self._refused: set[str] = set()  # the API's reasons already logged
        # Prints the mailed PDF; None: reports go without one (alerts.reports.pdf false).
        self.printer = (printer or Printer.found()) if settings.pdf else None
        if self.printer is not None and self.printer.browser is None:
            log.warning("shift reports are mailed without their PDF: %s", no_browser_detail())
            self.printer = None
        types = {c.id: c.type for c in plant.alerts.channels}
        for pid in self._named():
            if not any(types[c] in REPORT_CHANNELS for c in plant.alerts.people[pid].channels):
                log.warning(
                    "shift reports: %s has no %s channel and gets no report",
                    pid,
                    "/".join(REPORT_CHANNELS),
                )

    def _named(self) -> set[str]:
        """Everyone a report may go to: those listed, the manager, every shift's lead."""
        alerts = self.plant.alerts
        lists = [
            self.settings.to,
            *self.settings.lines.values(),
            *self.settings.shifts.values(),
            self.settings.plant.to,
        ]
        listed = {who for to in lists for who in to}
        named = listed - {NEXT_LEAD, MANAGER}
        if MANAGER in listed and alerts.manager is not None:
            named.add(alerts.manager)
        if NEXT_LEAD in listed:
            shifts = [
                *self.plant.shifts,
                *(s for line in self.plant.lines for s in line.shifts or ()),
            ]
            named.update(s.lead for s in shifts if s.lead is not None)
        return named

    async def run(self, stop: asyncio.Event) -> None:
        """Look every `CHECK_EVERY_S` until `stop`; a failed look is logged and retried."""
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            self._client = self._client or client
            while not stop.is_set():
                try:
                    sent = await self.check()
                    if sent:
                        log.info("shift reports: %d queued", sent)
                except httpx.HTTPError as error:
                    log.warning("shift reports: the KPI API does not answer (%s)", error)
                await wait_set(stop, CHECK_EVERY_S)

    def owed(self, now_ms: int) -> list[Due]:
        """Reports of what ended `after` ago within `lookback` (each line's shifts; the
        plant's production days and ISO weeks), each with the (person, channel) pairs
        whose report is not in the outbox yet."""
        ended = now_ms - round(self.settings.after * 1000)
        since = now_ms - round(self.settings.lookback * 1000)
        out = [
            *self._shifts_owed(since, ended),
            *self._plant_owed(since, ended),
        ]
        return [due for due in out if due.todo]

    def _shifts_owed(self, since: int, ended: int) -> list[Due]:
        out = []
        for line in self.plant.lines:
            for span in self.calendar.spans(line.id, since, ended):
                if span.end > ended or span.end < since:
                    continue
                todo = self._unsent(shift_key(span), self.recipients(span))
                query = {"line": span.line, "date": str(span.day), "shift": span.name}
                out.append(
                    Due(
                        key=shift_key(span),
                        group=f"report/{span.line}",
                        route="/v1/reports/shift",
                        query=query,
                        name=f"{span.line} {span.name} {span.day}",
                        span=span,
                        todo=todo,
                        pdf_name=pdf_name("shift", span.slug),
                    )
                )
        return out

    def _plant_owed(self, since: int, ended: int) -> list[Due]:
        """The plant's days and weeks that ended within [since, ended]."""
        wanted = self.settings.plant
        periods = [p for p, on in (("day", wanted.daily), ("week", wanted.weekly)) if on]
        if not periods or not wanted.to:
            return []
        zone = self.calendar.zone
        out = []
        first = ms_to_local_date(since, zone) - timedelta(days=8)
        last = ms_to_local_date(ended, zone)
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        for period in periods:
            for day in days:
                if period == "week" and day.weekday() != 0:
                    continue
                after = day + timedelta(days=7 if period == "week" else 1)
                begin, end = self.calendar.day_bounds(day)[0], self.calendar.day_bounds(after)[0]
                if not since <= end <= ended or not self._planned(begin, end):
                    continue  # not over in the window, or no line worked (a Sunday)
                label = iso_week(day) if period == "week" else day.isoformat()
                key = f"report/plant/{period}/{label}"
                todo = self._unsent(key, self._on_channels(self._people(wanted.to, None)))
                query = {"period": period, "date": day.isoformat()}
                out.append(
                    Due(
                        key=key,
                        group="report/plant",
                        route="/v1/reports/plant",
                        query=query,
                        name=f"plant {period} {label}",
                        span=None,
                        todo=todo,
                        pdf_name=pdf_name("plant", f"{period}_{label}"),
                    )
                )
        return out

    def _unsent(self, key: str, pairs: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """The (person, channel) pairs whose report `key` the outbox does not hold yet."""
        return tuple(
            (person, channel)
            for person, channel in pairs
            if not self.outbox.has(recipient_key(key, channel, person))
        )

    def _planned(self, start: int, end: int) -> bool:
        """Whether any line has planned time in [start, end) by the calendar."""
        return any(self.calendar.planned_ms(line.id, start, end) > 0 for line in self.plant.lines)

    def recipients(self, span: ShiftSpan) -> list[tuple[str, str]]:
        """(person, channel) pairs of the report of `span`, on report-carrying channels:
        of the line's own list, else the shift's, else `to`."""
        settings = self.settings
        to = settings.lines.get(span.line, settings.shifts.get(span.name, settings.to))
        return self._on_channels(self._people(to, span))

    def _people(self, to: tuple[str, ...], span: ShiftSpan | None) -> list[str]:
        """Person ids of `to`: `next_lead` the lead of the shift after `span`."""
        who: list[str] = []
        for entry in to:
            if entry == NEXT_LEAD:
                following = None if span is None else self.duty.shift_on(span.line, span.end)
                if following is not None and following.lead is not None:
                    who.append(following.lead)
            elif entry == MANAGER:
                if self.plant.alerts.manager is not None:
                    who.append(self.plant.alerts.manager)
            else:
                who.append(entry)
        return list(dict.fromkeys(who))

    def _on_channels(self, who: list[str]) -> list[tuple[str, str]]:
        people = self.plant.alerts.people
        types = {c.id: c.type for c in self.plant.alerts.channels}
        return [
            (person, channel)
            for person in who
            for channel in people[person].channels
            if types[channel] in REPORT_CHANNELS
        ]

    async def check(self) -> int:
        """Queue every owed report the API can give now; returns how many were queued."""
        now_ms = int(self._clock() * 1000)
        queued = 0
        for due in self.owed(now_ms):
            try:
                report = await self._fetch(due)
            except httpx.HTTPError as error:
                log.warning("report %s: the KPI API does not answer (%s)", due.name, error)
                continue
            if report is None:
                continue
            document, page = report
            if due.span is not None:
                span = due.span
                written = self.notes(span.line, span.day, span.name)
                document = {**document, **handover(self.alerts(span.line), written, span, now_ms)}
                # (The KPI API's page has the process control section, from its spc topic.)
                page = page.replace("</body>", handover_html(document) + "</body>", 1)
                subject = (
                    f"Shift report {due.name}: OEE {percent(document['kpis']['oee'])}, "
                    f"output {count(document['output']['count'])}"
                )
                text = (
                    _text(document)
                    + notes_text(written)
                    + process_control_text(document.get("process_control", []))
                )
            else:
                whole = document["plant"]
                cost = whole["loss_cost"]
                lost = "" if cost is None else f", losses {cost:,.0f} {document['currency']}"
                subject = (
                    f"Plant report {document['label']}: OEE {percent(whole['kpis']['oee'])}{lost}"
                )
                text = _plant_text(document)
            extra = {"subject": subject, "html": page, "text": text, "report": document}
            if self._mailed(due.todo):
                extra.update(await self._pdf(due, page))
                if due.span is not None:  # the PDF has the page's own bars, not images
                    extra.update(await self._charts(due, document, page))
            queued += self.outbox.enqueue(
                [
                    Notification(
                        key=recipient_key(due.key, channel, person),
                        kind="report",
                        channel=channel,
                        recipient=person,
                        alerts=(),
                        group=due.group,
                        created_at=now_ms,
                        extra=extra,
                    )
                    for person, channel in due.todo
                ]
            )
        return queued

    def _mailed(self, todo: tuple[tuple[str, str], ...]) -> bool:
        types = {c.id: c.type for c in self.plant.alerts.channels}
        return self.printer is not None and any(types[c] == "email" for _, c in todo)

    async def _pdf(self, due: Due, page: str) -> dict[str, str]:
        """The page as a PDF attachment (`pdf` base64, `pdf_name`), or nothing when the
        browser fails: the report still goes, as HTML, and the log says why."""
        assert self.printer is not None  # noqa: S101 - _mailed checked it
        try:
            pdf = await self.printer.pdf(page)
        except PdfError as error:
            log.warning("report %s goes without its PDF: %s", due.name, error.detail)
            return {}
        return {"pdf": base64.b64encode(pdf).decode("ascii"), "pdf_name": due.pdf_name}

    async def _charts(self, due: Due, document: dict[str, Any], page: str) -> dict[str, Any]:
        """The shift report's charts as images of the mail (`images`: content id, name,
        base64 PNG) and the page showing them (`html`); nothing when the browser fails:
        the page's tables say the same."""
        assert self.printer is not None  # noqa: S101 - _mailed checked it
        charts = shift_charts(document)
        images = []
        for chart in charts:
            try:
                png = await self.printer.png(chart_page(chart), chart.width, chart.height)
            except PdfError as error:
                log.warning("report %s goes without its charts: %s", due.name, error.detail)
                return {}
            images.append(
                {
                    "cid": chart.cid,
                    "name": f"{chart.name}.png",
                    "png": base64.b64encode(png).decode("ascii"),
                }
            )
        if not images:
            return {}
        return {"images": images, "html": page.replace(CHARTS_MARK, charts_html(charts), 1)}

    async def _fetch(self, due: Due) -> tuple[dict[str, Any], str] | None:
        """The report's JSON and page, or None while there is no final record of it."""
        client = self._client
        if client is None:
            raise RuntimeError("ShiftReportSender.check needs a client: call run()")
        url = self.settings.api_url.rstrip("/") + due.route
        query = due.query
        # The KPI API would add the shift's notes and alerts from an alerts API (its
        # `--alerts-url`): this service adds its own, from its store, below.
        query = {**query, "handover": "false"} if due.span is not None else query
        answer = await client.get(url, params=query)
        if answer.status_code == 404:
            return None  # no record of it yet (or a line without data)
        if answer.status_code == 400:  # e.g. a plant without the records it needs
            try:
                said = str(answer.json().get("detail", answer.text))
            except ValueError:
                said = answer.text
            if said not in self._refused:
                self._refused.add(said)
                log.warning("report %s cannot be made: %s", due.name, said)
            return None
        answer.raise_for_status()
        document: dict[str, Any] = answer.json()
        if not document["final"]:
            return None
        page = await client.get(url, params={**query, "format": "html"})
        page.raise_for_status()
        return document, page.text


def _text(report: dict[str, Any]) -> str:
    """The report's headline figures as plain text, for mail readers without HTML."""
    out = report["output"]
    k = report["kpis"]
    lines = [
        f"{report['line']} · {report['shift']} shift · {report['date']}",
        f"good out of {out['machine']}: {count(out['count'])} (target {count(out['target'])})",
        f"OEE {percent(k['oee'])} · availability {percent(k['availability'])} · "
        f"performance {percent(k['performance'])} · quality {percent(k['quality'])}",
    ]
    for reason in report["downtime"]["unplanned"][:5]:
        minutes = timedelta(seconds=round(reason["seconds"]))
        lines.append(f"  {reason['reason']}: {minutes}")
    lines.append(f"stops still without a reason: {len(report['uncoded_stops'])}")
    raised = report.get("alerts")
    if raised is not None:
        lines.append(
            f"alerts: {raised['raised']} raised, {raised['acknowledged']} acknowledged, "
            f"{raised['resolved']} resolved"
        )
    return "\n".join(lines) + "\n"


def _plant_text(report: dict[str, Any]) -> str:
    """The plant report's figures per line as plain text."""
    lines = [f"Plant report · {report['label']}"]
    for entry in [*report["lines"], {"line": "plant", "records": 1, **report["plant"]}]:
        if not entry["records"]:
            lines.append(f"{entry['line']}: no data")
            continue
        cost = entry["loss_cost"]
        lost = "" if cost is None else f", losses {cost:,.0f} {report['currency']}"
        waiting = entry.get("uncoded_stops")  # (a KPI API before them has none)
        asked = f", {waiting} stops without a reason" if waiting else ""
        lines.append(
            f"{entry['line']}: OEE {percent(entry['kpis']['oee'])}, "
            f"output {count(entry['output_count'])} (target {count(entry['target_count'])})"
            f"{lost}{asked}"
        )
    return "\n".join(lines) + "\n"


def handover(
    alerts: list[Alert], notes: list[dict[str, Any]], span: ShiftSpan, now_ms: int
) -> dict[str, Any]:
    """What a shift hands over, as a report carries it (the mailed one and, through
    `GET /v1/handover`, the KPI API's): its notes, the line's alerts that fired during it,
    and whether those are all still kept (resolved alerts are kept `KEEP_MS`)."""
    return {
        "notes": notes,
        "alerts": shift_alerts(alerts, span),
        "alerts_complete": now_ms - span.end <= KEEP_MS,
    }


def shift_alerts(alerts: list[Alert], span: ShiftSpan) -> dict[str, Any]:
    """The alerts of the line that fired during the shift: how many, how many were
    acknowledged (and how long that took) and resolved, and each of them."""
    fired = [a for a in alerts if a.fired_at is not None and span.start <= a.fired_at < span.end]
    to_ack = [
        (a.acked_at - a.fired_at) / 1000
        for a in fired
        if a.acked_at is not None and a.fired_at is not None
    ]
    return {
        "raised": len(fired),
        "acknowledged": len(to_ack),
        "resolved": sum(1 for a in fired if a.resolved_at is not None),
        "mean_time_to_ack_s": sum(to_ack) / len(to_ack) if to_ack else None,
        "max_time_to_ack_s": max(to_ack, default=None),
        "list": [
            {
                "summary": a.summary,
                "severity": a.severity,
                "fired_at": utc_text(a.fired_at or 0),
                "acked_by": a.acked_by,
                "time_to_ack_s": None
                if a.acked_at is None or a.fired_at is None
                else (a.acked_at - a.fired_at) / 1000,
                "resolved_at": None if a.resolved_at is None else utc_text(a.resolved_at),
            }
            for a in sorted(fired, key=lambda a: (a.fired_at or 0, a.fingerprint))
        ],
    }
