"""Shift reports delivered by email (issue 20, item 1): the classic example's KPI API over
real HTTP (uvicorn), the alerts outbox on SQLite, a real SMTP server (aiosmtpd). When the
shift is over, its next lead and the manager each get the report once, HTML with a text
part and the page printed to PDF by Debian's Chromium attached; a restart of the sender
and the outbox at the shift's end sends nothing twice. A line with recipients of its
own sends to those, here on Slack."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

from linepulse.calendar import Calendar
from linepulse.config import PlantConfig
from linepulse.figures import percent
from linepulse.report_charts import WIDTH as CHART_WIDTH
from linepulse.spc import SpcChart
from linepulse.spc_stream import SpcStream, spc_record
from services.alerts.metrics import AlertMetrics
from services.alerts.model import Alert, AlertState
from services.alerts.notes import ShiftNotes
from services.alerts.outbox import Outbox
from services.alerts.reports import ShiftReportSender
from services.alerts.store import AlertStore
from tests.integration.classic_api import classic_api
from tests.integration.receivers import HttpReceiver, SmtpReceiver
from tests.integration.test_report_browser import SHOWN, assert_report_pdf
from tests.unit.kpi.test_shift_report import classic

pytestmark = pytest.mark.integration

SHIFT_END = datetime(2026, 11, 2, 14, 0, tzinfo=UTC).timestamp()
FILL_CHART = SpcChart.model_validate(
    {
        "machine": "filler-1",
        "signal": "fill_g",
        "subgroup_size": 5,
        "limits": {"center": 500.0, "sigma": 1.0},
        "spec": {"lsl": 495.0, "usl": 505.0},
        "rules": ["beyond_3sigma"],
    }
)
AFTER_S = 300.0
SILENT_ALERTS_API = "http://127.0.0.1:1"  # port 1: nothing listens


def plant_with_mail(smtp_port: int, api_url: str) -> PlantConfig:
    """The classic plant, a late shift led by Ann after the early one, a manager, mail."""
    early = {
        "name": "early",
        "start": "06:00",
        "end": "14:00",
        "breaks": [
            {"start": "08:00", "end": "08:15"},
            {"start": "10:00", "end": "10:30"},
            {"start": "12:00", "end": "12:15"},
        ],
    }
    late = {"name": "late", "start": "14:00", "end": "22:00", "lead": "ann"}
    alerts: dict[str, Any] = {
        "channels": [
            {
                "id": "mail",
                "type": "email",
                "smtp_host": "127.0.0.1",
                "smtp_port": smtp_port,
                "sender": "linepulse@plant.test",
                "starttls": False,  # aiosmtpd on loopback offers none
            },
            {"id": "pager", "type": "console"},
        ],
        "people": {
            "ann": {"name": "Ann", "email": "ann@plant.test", "channels": ["mail"]},
            "max": {"name": "Max", "email": "max@plant.test", "channels": ["mail"]},
        },
        "manager": "max",
        "reports": {"api_url": api_url, "to": ["next_lead", "manager"], "after": AFTER_S},
    }
    spc = [FILL_CHART.model_dump(mode="json", exclude_none=True)]
    return classic(shifts=[early, late], alerts=alerts, spc=spc)


def fill_subgroups() -> list[dict[str, Any]]:
    """A fill weight charted on filler-1 through the early shift, as the KPI worker puts
    it on the spc topic: one subgroup beyond its upper limit at 09:00."""
    fill = SpcStream(FILL_CHART, 0)
    points = []
    for minute in range(8 * 60):
        at_ms = int((SHIFT_END - 8 * 3600 + minute * 60) * 1000)
        weight = 505.0 if minute == 180 else 500.0 + (minute % 5 - 2) * 0.3
        points += fill.add([(at_ms + k, weight + k * 0.1) for k in range(5)])
    return [spc_record(fill, point, "line-1") for point in points]


async def deliver(outbox: Outbox, smtp: SmtpReceiver, count: int) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(outbox.run(stop))
    try:
        await smtp.wait_for(count, limit_s=20)
        await asyncio.sleep(0.5)  # room for a duplicate to show
    finally:
        stop.set()
        await running


async def test_the_report_is_mailed_once_per_shift_across_a_restart(tmp_path: Path) -> None:
    async with SmtpReceiver() as smtp:
        subgroups = fill_subgroups()
        with classic_api(
            tmp_path,
            plant_with_mail(smtp.port, "http://127.0.0.1:1"),
            lambda store: store.spc.upsert(subgroups),
            # An alerts API the KPI API would ask for the notes and alerts, were the
            # sender not to ask without them (it adds its own): none answers there.
            alerts_url=SILENT_ALERTS_API,
        ) as url:
            plant = plant_with_mail(smtp.port, url)
            assert plant.alerts.reports is not None
            settings = plant.alerts.reports
            path = tmp_path / "alerts" / "outbox.sqlite"
            async with httpx.AsyncClient(timeout=30) as client:
                # The early lead's handover note, written ten minutes before the end.
                notes = ShiftNotes(AlertStore.in_dir(tmp_path / "alerts"), Calendar(plant))
                handover = "nozzle 3 drips <again>\nspare ordered"
                notes.add("line-1", handover, "bob", int((SHIFT_END - 600) * 1000))

                def sender(outbox: Outbox, at: float) -> ShiftReportSender:
                    clock = lambda: at  # noqa: E731
                    return ShiftReportSender(
                        plant,
                        settings,
                        outbox,
                        alerts=alerts,
                        notes=notes.of_shift,
                        clock=clock,
                        client=client,
                    )

                outbox = Outbox(path, plant.alerts, AlertMetrics.create(CollectorRegistry()))
                # Within `after` of the shift's end its record may still move: nothing yet.
                assert await sender(outbox, SHIFT_END + 60).check() == 0
                # Ann (the next lead) and Max (the manager).
                assert await sender(outbox, SHIFT_END + AFTER_S).check() == 2
                outbox.close()  # the service stops at the shift's end, before sending
                outbox = Outbox(path, plant.alerts, AlertMetrics.create(CollectorRegistry()))
                again = sender(outbox, SHIFT_END + 900)
                assert await again.check() == 0  # owed nothing: both are queued
                await deliver(outbox, smtp, 2)
                assert await again.check() == 0  # and nothing after they went out
                outbox.close()
    assert sorted(m.rcpt_tos[0] for m in smtp.mails) == ["ann@plant.test", "max@plant.test"]
    mail = smtp.mails[0].message
    assert mail["Subject"].startswith("Shift report line-1 early 2026-11-02: OEE 74.8 %")
    assert mail["Message-ID"].startswith("<report/line-1/2026-11-02/early/mail/")
    parts = {
        part.get_content_type(): body(part)
        for part in mail.walk()
        if part.get_content_maintype() == "text"
    }
    assert "line-1 · early shift · 2026-11-02" in parts["text/html"]
    assert "1,880 EUR" in parts["text/html"]
    assert "OEE 74.8 %" in parts["text/plain"]
    # The jam at 07:00 paged, Ann acknowledged it after 4 minutes, it resolved at 07:20;
    # the alert of the night before is not this shift's.
    assert "1 raised, 1 acknowledged (mean 4 min), 1 resolved" in parts["text/html"]
    assert "filler-1 is down" in parts["text/html"]
    assert "alerts: 1 raised, 1 acknowledged, 1 resolved" in parts["text/plain"]
    assert "Notes" in parts["text/html"]
    assert "nozzle 3 drips &lt;again&gt;<br>spare ordered" in parts["text/html"]
    assert "Not shown" not in parts["text/html"]  # the KPI API did not try SILENT_ALERTS_API
    assert parts["text/html"].count("Notes</h2>") == 1
    assert "Process control" in parts["text/html"]
    assert "filler-1/fill_g" in parts["text/html"]
    assert "beyond_3sigma ×1" in parts["text/html"]
    text = parts["text/plain"].replace("\r\n", "\n")
    # 480 checks; the last one closes with a sample after it, which this shift has not.
    assert "spc filler-1/fill_g: 479 subgroups, broken: beyond_3sigma x1; Cpk " in text
    assert "note by bob: nozzle 3 drips <again>\n  spare ordered\n" in text
    assert_charts(mail, parts["text/html"])
    (attached,) = [part for part in mail.walk() if part.get_content_maintype() == "application"]
    assert attached.get_content_type() == "application/pdf"
    assert attached.get_filename() == "shift-report_line-1_2026-11-02_early.pdf"
    pdf = attached.get_payload(decode=True)
    assert isinstance(pdf, bytes)
    # The mailed page, alerts section included, printed.
    assert_report_pdf(pdf, (*SHOWN, "1 raised, 1 acknowledged", "filler-1 is down"))


async def test_a_line_with_recipients_of_its_own_sends_to_them(tmp_path: Path) -> None:
    """`alerts.reports.lines`: line-1's reports go to the manager only (here on Slack),
    not to the next lead of `to`."""
    async with HttpReceiver() as slack:
        with classic_api(tmp_path, plant_with_mail(2525, "http://127.0.0.1:1")) as url:
            base = plant_with_mail(2525, url)
            alerts = base.alerts.model_dump(mode="json", exclude_none=True)
            alerts["channels"].append({"id": "chat", "type": "slack", "url": slack.url})
            alerts["people"]["max"]["channels"] = ["chat"]
            alerts["people"]["max"]["slack_user"] = "U0MAX"
            alerts["reports"]["lines"] = {"line-1": ["manager"]}
            shifts = [s.model_dump(mode="json") for s in base.shifts]
            plant = classic(shifts=shifts, alerts=alerts)
            assert plant.alerts.reports is not None
            metrics = AlertMetrics.create(CollectorRegistry())
            outbox = Outbox(tmp_path / "outbox.sqlite", plant.alerts, metrics)
            try:
                async with httpx.AsyncClient(timeout=30) as client:
                    sender = ShiftReportSender(
                        plant,
                        plant.alerts.reports,
                        outbox,
                        clock=lambda: SHIFT_END + AFTER_S,
                        client=client,
                    )
                    owed = sender.owed(int((SHIFT_END + AFTER_S) * 1000))
                    # The early shift of the day (and the late one of the day before, which
                    # has no record and is not sent).
                    (due,) = [due for due in owed if due.name == "line-1 early 2026-11-02"]
                    assert due.todo == (("max", "chat"),)
                    assert await sender.check() == 1
                stop = asyncio.Event()
                running = asyncio.create_task(outbox.run(stop))
                try:
                    await slack.wait_for(lambda got: len(got) == 1)
                finally:
                    stop.set()
                    await running
            finally:
                outbox.close()
    body = slack.requests[0].json()
    assert body["text"].startswith("<@U0MAX> Shift report line-1 early 2026-11-02: OEE 74.8 %")
    assert "OEE 74.8 %" in body["blocks"][1]["text"]["text"]


DAY_END = datetime(2026, 11, 3, 0, 0, tzinfo=UTC).timestamp()
WEEK_END = datetime(2026, 11, 9, 0, 0, tzinfo=UTC).timestamp()  # ISO week 2026-W45 over


async def test_the_manager_gets_the_plants_day_and_week_reports_once(tmp_path: Path) -> None:
    """`alerts.reports.plant` (daily and weekly to the manager by default): when the
    production day is over, Max gets the plant's day report besides the two shift reports;
    when the ISO week is over, its week report, each once, with its PDF."""
    async with SmtpReceiver() as smtp:
        with classic_api(tmp_path, plant_with_mail(smtp.port, "http://127.0.0.1:1")) as url:
            plant = plant_with_mail(smtp.port, url)
            assert plant.alerts.reports is not None
            settings = plant.alerts.reports
            metrics = AlertMetrics.create(CollectorRegistry())
            outbox = Outbox(tmp_path / "outbox.sqlite", plant.alerts, metrics)
            try:
                async with httpx.AsyncClient(timeout=30) as client:

                    def at(moment: float) -> ShiftReportSender:
                        clock = lambda: moment  # noqa: E731
                        return ShiftReportSender(
                            plant, settings, outbox, clock=clock, client=client
                        )

                    # The early shift to Ann and Max, the late one to Max; not the day yet.
                    assert await at(DAY_END + 60).check() == 3
                    assert await at(DAY_END + AFTER_S).check() == 1  # the day's, to Max
                    assert await at(DAY_END + 2 * AFTER_S).check() == 0
                    assert await at(WEEK_END + AFTER_S).check() == 1  # the week's
                    assert await at(WEEK_END + 2 * AFTER_S).check() == 0
                    # The day's record (the late shift had no data): its OEE, and the
                    # week's, which is that one day.
                    query = {"from": "2026-11-02T00:00:00Z", "window": "day", "scope": "line"}
                    (day,) = (await client.get(f"{url}/v1/kpis/history", params=query)).json()
                await deliver(outbox, smtp, 5)
            finally:
                outbox.close()
    plant_mails = {
        m.message["Subject"]: m for m in smtp.mails if m.message["Subject"].startswith("Plant")
    }
    oee = percent(day["oee"])
    assert sorted(plant_mails) == [
        f"Plant report day 2026-11-02: OEE {oee}, losses 4,319 EUR",
        f"Plant report week 2026-W45: OEE {oee}, losses 4,319 EUR",
    ]
    for subject, mail in plant_mails.items():
        assert mail.rcpt_tos == ["max@plant.test"]
        (attached,) = [p for p in mail.message.walk() if p.get_content_maintype() == "application"]
        label = subject.split(":")[0].removeprefix("Plant report ")
        period, _, when = label.partition(" ")
        assert attached.get_filename() == f"plant-report_{period}_{when}.pdf"
        pdf = attached.get_payload(decode=True)
        assert isinstance(pdf, bytes)
        assert_report_pdf(pdf, (f"Plant report · {label}", "line-1", oee, "jam", "4,319 EUR"))


def alerts(line: str) -> list[Alert]:
    """The engine's alerts of `line`: one of the shift, one of the night before."""
    at = int(datetime(2026, 11, 2, 7, 0, tzinfo=UTC).timestamp() * 1000)
    labels = {"alertname": "machine-down", "line": line, "machine": "filler-1"}

    def alert(fired: int, summary: str) -> Alert:
        return Alert(
            fingerprint=f"fp-{fired}",
            rule="machine-down",
            labels=labels,
            state=AlertState.RESOLVED,
            severity="critical",
            summary=summary,
            runbook=None,
            value="down",
            pending_since=fired,
            fired_at=fired,
            acked_by="ann",
            acked_at=fired + 4 * 60_000,
            resolved_at=fired + 20 * 60_000,
        )

    return [alert(at, "filler-1 is down"), alert(at - 10 * 3_600_000, "night stop")]


def assert_charts(mail: Message, page: str) -> None:
    """The mail carries the report's two charts as PNG images of its page (drawn by
    Debian's Chromium): each referenced by content id, of its size, in its colour."""
    images = {
        str(part["Content-ID"]).strip("<>"): part
        for part in mail.walk()
        if part.get_content_type() == "image/png"
    }
    assert sorted(images) == ["downtime@linepulse", "losses@linepulse"]
    for cid, part in images.items():
        assert f'src="cid:{cid}"' in page
        assert part.get_content_disposition() == "inline"
        png = part.get_payload(decode=True)
        assert isinstance(png, bytes)
        with Image.open(io.BytesIO(png)) as image:
            rgb = image.convert("RGB")
            assert rgb.width == CHART_WIDTH
            colours = {colour for _, colour in rgb.getcolors(maxcolors=1 << 16) or []}
        # The waterfall's losses are red, the Pareto's reasons orange.
        wanted = {"losses@linepulse": (231, 76, 60), "downtime@linepulse": (230, 126, 34)}[cid]
        assert wanted in colours, cid
    assert "Where the time went: Planned time 7 h 00 min, Equipment failure 47 min" in page


def body(part: Message) -> str:
    payload = part.get_payload(decode=True)
    return payload.decode() if isinstance(payload, bytes) else ""


@pytest.mark.parametrize(
    ("reports", "said"),
    [
        ({"to": ["nobody"]}, r"alerts\.reports\.to: 'nobody' is neither a person"),
        ({"lines": {"line-9": ["manager"]}}, r"alerts\.reports\.lines: unknown line 'line-9'"),
        ({"lines": {"line-1": ["bob"]}}, r"alerts\.reports\.lines\.line-1: 'bob' is neither"),
    ],
)
def test_who_gets_it_is_checked_when_the_config_is_loaded(
    reports: dict[str, Any], said: str
) -> None:
    with pytest.raises(Exception, match=said):
        classic(
            alerts={
                "channels": [{"id": "pager", "type": "console"}],
                "reports": {"api_url": "http://127.0.0.1:8080", **reports},
            }
        )


def test_a_recipient_without_a_report_channel_is_named_in_the_log(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    plant = plant_with_mail(2525, "http://127.0.0.1:1")
    people = {
        "ann": {"name": "Ann", "channels": ["pager"]},
        "max": {"name": "Max", "email": "max@plant.test", "channels": ["mail", "pager"]},
    }
    alerts = {**plant.alerts.model_dump(mode="json", exclude_none=True), "people": people}
    pager = {"id": "pager", "type": "alertmanager", "url": "http://127.0.0.1:1"}
    alerts["channels"] = [alerts["channels"][0], pager]
    plant = classic(shifts=[s.model_dump(mode="json") for s in plant.shifts], alerts=alerts)
    assert plant.alerts.reports is not None
    outbox = Outbox(tmp_path / "o.sqlite", plant.alerts, AlertMetrics.create(CollectorRegistry()))
    try:
        with caplog.at_level("WARNING", logger="services.alerts.reports"):
            ShiftReportSender(plant, plant.alerts.reports, outbox)
    finally:
        outbox.close()
    assert "ann has no email/slack/webhook/console channel" in caplog.text
    assert "max has no" not in caplog.text
