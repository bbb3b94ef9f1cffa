"""Shift reports sent when a shift is over, once per shift and recipient, also across
restarts.

The active alerts instance looks at the shift calendar every `CHECK_EVERY_S`: every shift
of every line that ended at least `alerts.reports.after` ago (and not more than
`lookback` ago) is owed to its recipients (`alerts.reports.to`: person ids, `next_lead`,
the lead of the line's shift that follows, and `manager`), on their channels that carry
a report (email, webhook, console). What is owed and not yet in the outbox is asked of
the KPI API (`GET /v1/reports/shift`, JSON and HTML) and enqueued, keyed
`report/{line}/{date}/{shift}/{channel}/{person}`.

Exactly once: the outbox is durable and ignores a key it has, so a restart (or a second
look) finds the report queued or sent and asks nothing; a shift whose record is not final
yet, or that the API cannot answer for now, is asked again at the next look, for as long
as `lookback` allows. Driven by the calendar, not by the `kpi` topic: a service that was
down when a shift ended still sends its report when it is back.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Final

import httpx

from linepulse.alerting import MANAGER, NEXT_LEAD, REPORT_CHANNELS, ShiftReports
from linepulse.calendar import Calendar, ShiftSpan, utc_text
from linepulse.config import PlantConfig
from linepulse.figures import count, percent
from linepulse.runtime import wait_set
from services.alerts.model import Alert, Notification
from services.alerts.outbox import Outbox
from services.alerts.routing import Duty

log = logging.getLogger(__name__)

CHECK_EVERY_S: Final = 30.0
REQUEST_TIMEOUT_S: Final = 30.0


def report_key(span: ShiftSpan, channel: str, person: str) -> str:
    return f"report/{span.line}/{span.day}/{span.name}/{channel}/{person}"


class ShiftReportSender:
    """Owed shift reports into the outbox (see the module docstring)."""

    def __init__(
        self,
        plant: PlantConfig,
        settings: ShiftReports,
        outbox: Outbox,
        *,
        alerts: Callable[[str], list[Alert]] = lambda line: [],
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.plant = plant
        self.settings = settings
        self.outbox = outbox
        self.alerts = alerts  # a line's alerts, open and recently resolved (the engine's)
        self.duty = Duty(plant)
        self.calendar: Calendar = self.duty.calendar
        self._clock = clock
        self._client = client
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
        named = {who for who in self.settings.to if who not in (NEXT_LEAD, MANAGER)}
        if MANAGER in self.settings.to and alerts.manager is not None:
            named.add(alerts.manager)
        if NEXT_LEAD in self.settings.to:
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

    def owed(self, now_ms: int) -> list[tuple[ShiftSpan, list[tuple[str, str]]]]:
        """Shifts that ended `after` ago within `lookback`, each with its (person, channel)
        recipients whose report is not in the outbox yet."""
        after_ms = round(self.settings.after * 1000)
        since = now_ms - round(self.settings.lookback * 1000)
        out = []
        for line in self.plant.lines:
            for span in self.calendar.spans(line.id, since, now_ms - after_ms):
                if span.end > now_ms - after_ms or span.end < since:
                    continue
                todo = [
                    (person, channel)
                    for person, channel in self.recipients(span)
                    if not self.outbox.has(report_key(span, channel, person))
                ]
                if todo:
                    out.append((span, todo))
        return out

    def recipients(self, span: ShiftSpan) -> list[tuple[str, str]]:
        """(person, channel) pairs of the report of `span`, on report-carrying channels."""
        people = self.plant.alerts.people
        types = {c.id: c.type for c in self.plant.alerts.channels}
        who: list[str] = []
        for entry in self.settings.to:
            if entry == NEXT_LEAD:
                following = self.duty.shift_on(span.line, span.end)
                if following is not None and following.lead is not None:
                    who.append(following.lead)
            elif entry == MANAGER:
                if self.plant.alerts.manager is not None:
                    who.append(self.plant.alerts.manager)
            else:
                who.append(entry)
        return [
            (person, channel)
            for person in dict.fromkeys(who)
            for channel in people[person].channels
            if types[channel] in REPORT_CHANNELS
        ]

    async def check(self) -> int:
        """Queue every owed report the API can give now; returns how many were queued."""
        now_ms = int(self._clock() * 1000)
        queued = 0
        for span, todo in self.owed(now_ms):
            report = await self._fetch(span)
            if report is None:
                continue
            document, page = report
            raised = shift_alerts(self.alerts(span.line), span)
            document = {**document, "alerts": raised}
            page = page.replace("</body>", alerts_html(raised) + "</body>", 1)
            subject = (
                f"Shift report {span.line} {span.name} {span.day}: OEE "
                f"{percent(document['kpis']['oee'])}, output {count(document['output']['count'])}"
            )
            extra = {"subject": subject, "html": page, "text": _text(document), "report": document}
            queued += self.outbox.enqueue(
                [
                    Notification(
                        key=report_key(span, channel, person),
                        kind="report",
                        channel=channel,
                        recipient=person,
                        alerts=(),
                        group=f"report/{span.line}",
                        created_at=now_ms,
                        extra=extra,
                    )
                    for person, channel in todo
                ]
            )
        return queued

    async def _fetch(self, span: ShiftSpan) -> tuple[dict[str, Any], str] | None:
        """The report's JSON and page, or None while there is no final record of it."""
        client = self._client
        if client is None:
            raise RuntimeError("ShiftReportSender.check needs a client: call run()")
        url = self.settings.api_url.rstrip("/") + "/v1/reports/shift"
        query = {"line": span.line, "date": str(span.day), "shift": span.name}
        answer = await client.get(url, params=query)
        if answer.status_code == 404:
            return None  # no record of the shift yet (or a line without data)
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


def alerts_html(raised: dict[str, Any]) -> str:
    """The report page's alerts section, in the page's own style (tables, inline CSS)."""
    e = html.escape
    cell = "padding:4px 8px;border-bottom:1px solid #ddd;"
    rows = "".join(
        f'<tr><td style="{cell}">{e(a["summary"])}</td>'
        f'<td style="{cell}">{e(a["severity"])}</td>'
        f'<td style="{cell}">{e(a["acked_by"] or "–")}</td>'
        f'<td style="{cell}text-align:right;">{_minutes(a["time_to_ack_s"])}</td>'
        f'<td style="{cell}">{"resolved" if a["resolved_at"] else "open"}</td></tr>'
        for a in raised["list"]
    )
    head = "".join(
        f'<th style="{cell}text-align:left;">{h}</th>'
        for h in ("alert", "severity", "acknowledged by", "after", "now")
    )
    summary = (
        f"{raised['raised']} raised, {raised['acknowledged']} acknowledged "
        f"(mean {_minutes(raised['mean_time_to_ack_s'])}), {raised['resolved']} resolved"
    )
    table = (
        '<table cellpadding="0" cellspacing="0" style="border-collapse:collapse;font-size:14px;'
        f'margin:4px 0 16px 0;"><tr>{head}</tr>{rows}</table>'
        if rows
        else ""
    )
    return (
        f'<h2 style="font-size:16px;">Alerts</h2><p style="margin:0 0 8px 0;">{summary}</p>{table}'
    )


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{round(seconds / 60)} min"
