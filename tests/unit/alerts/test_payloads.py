"""Channel payloads against the receivers' documented formats, and the retry rules."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from linepulse.calendar import rfc3339
from services.alerts import channels
from services.alerts.channel_send import classify_http, parse_retry_after
from services.alerts.model import Notification
from services.alerts.outbox import backoff_s

T0 = 1_714_543_200_000  # 2024-05-01T06:00:00Z


def alert(
    fp: str = "a1b2c3d4e5f60718",
    *,
    state: str = "firing",
    machine: str = "press-1",
    severity: str = "critical",
    resolved_at: int | None = None,
    runbook: str | None = "https://wiki.example/oee",
) -> dict[str, Any]:
    return {
        "fingerprint": fp,
        "rule": "oee_low",
        "labels": {
            "alertname": "oee_low",
            "severity": severity,
            "site": "plant-a",
            "line": "L1",
            "machine": machine,
            "team": "",
        },
        "state": state,
        "severity": severity,
        "summary": f"oee_low on {machine}: 0.52",
        "runbook": runbook,
        "value": 0.52,
        "pending_since": T0 - 600_000,
        "fired_at": T0,
        "resolved_at": resolved_at,
        "acked_by": None,
    }


def note(
    *alerts: dict[str, Any], kind: str = "firing", recipient: str | None = "ana"
) -> Notification:
    return Notification(
        key=f"k-{kind}",
        kind=kind,  # type: ignore[arg-type]
        channel="ch",
        recipient=recipient,
        alerts=alerts,
        group="oee_low/L1",
        created_at=T0 + 1000,
    )


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(T0) == "2024-05-01T06:00:00.000Z"
    assert rfc3339(T0 + 1234) == "2024-05-01T06:00:01.234Z"


def test_webhook_is_the_alertmanager_v4_shape() -> None:
    body = channels.webhook_payload(
        note(alert(), alert("ffff", machine="press-2")), receiver="ana", external_url="http://lp"
    )
    assert set(body) == {
        "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
        "commonLabels", "commonAnnotations", "externalURL", "alerts", "kind", "key",
    }  # fmt: skip
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "ana"
    assert body["groupKey"] == "oee_low/L1"
    assert body["groupLabels"] == {"alertname": "oee_low", "line": "L1"}
    # machine differs, empty `team` dropped
    assert body["commonLabels"] == {
        "alertname": "oee_low", "severity": "critical", "site": "plant-a", "line": "L1"
    }  # fmt: skip
    assert body["commonAnnotations"] == {"runbook_url": "https://wiki.example/oee", "value": "0.52"}
    first = body["alerts"][0]
    assert set(first) == {
        "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"
    }  # fmt: skip
    assert first["status"] == "firing"
    assert first["startsAt"] == "2024-05-01T06:00:00.000Z"
    assert first["endsAt"] == "0001-01-01T00:00:00Z"
    assert first["annotations"]["summary"] == "oee_low on press-1: 0.52"
    assert first["generatorURL"] == "http://lp/v1/alerts?fingerprint=a1b2c3d4e5f60718"
    assert (body["kind"], body["key"]) == ("firing", "k-firing")


def test_webhook_resolved_group_has_end_times() -> None:
    body = channels.webhook_payload(
        note(alert(state="resolved", resolved_at=T0 + 60_000), kind="resolved"), receiver="x"
    )
    assert body["status"] == "resolved"
    assert body["alerts"][0]["status"] == "resolved"
    assert body["alerts"][0]["endsAt"] == "2024-05-01T06:01:00.000Z"
    assert body["alerts"][0]["generatorURL"] == ""


def test_webhook_group_fires_while_any_alert_fires() -> None:
    body = channels.webhook_payload(
        note(alert(state="resolved", resolved_at=T0), alert("b", state="acknowledged")),
        receiver="x",
    )
    assert body["status"] == "firing"
    assert [a["status"] for a in body["alerts"]] == ["resolved", "firing"]


def test_slack_mentions_the_recipient_in_text_and_blocks() -> None:
    body = channels.slack_payload(note(alert()), slack_user="U024BE7LH")
    assert set(body) == {"text", "blocks"}
    assert body["text"] == "<@U024BE7LH> [FIRING] oee_low on press-1: 0.52"
    assert body["blocks"][0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "[FIRING] oee_low on press-1: 0.52"},
    }
    section = body["blocks"][1]
    assert section["type"] == "section"
    assert section["text"]["type"] == "mrkdwn"
    assert "<https://wiki.example/oee|Runbook>" in section["text"]["text"]
    assert "plant-a/L1/press-1" in section["text"]["text"]
    assert body["blocks"][-1]["text"]["text"] == "<@U024BE7LH>"


def test_slack_without_user_and_many_alerts_stays_within_block_limits() -> None:
    many = [alert(f"fp{i}", machine=f"m{i}") for i in range(60)]
    body = channels.slack_payload(note(*many), slack_user=None)
    assert "<@" not in body["text"]
    assert body["text"] == "[FIRING:60] oee_low on L1"
    assert len(body["blocks"]) <= 50
    assert body["blocks"][-1]["elements"][0]["text"] == "and 40 more"


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("critical", "critical"), ("warning", "warning"), ("info", "info"), ("bogus", "warning")],
)
def test_pagerduty_trigger(severity: str, expected: str) -> None:
    (event,) = channels.pagerduty_events(note(alert(severity=severity)), routing_key="R" * 32)
    assert event["routing_key"] == "R" * 32
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == "a1b2c3d4e5f60718"
    payload = event["payload"]
    assert payload["summary"] == "oee_low on press-1: 0.52"
    assert payload["source"] == "press-1"
    assert payload["severity"] == expected
    assert payload["component"] == "press-1"
    assert payload["group"] == "L1"
    assert payload["class"] == "oee_low"
    assert payload["timestamp"] == "2024-05-01T06:00:00.000Z"
    assert payload["custom_details"]["value"] == 0.52
    assert event["links"] == [{"href": "https://wiki.example/oee", "text": "Runbook"}]


def test_pagerduty_one_event_per_alert_with_its_own_action() -> None:
    events = channels.pagerduty_events(
        note(
            alert("r", state="resolved", resolved_at=T0),
            alert("k", state="acknowledged"),
            alert("f"),
        ),
        routing_key="key",
    )
    assert [(e["dedup_key"], e["event_action"]) for e in events] == [
        ("r", "resolve"),
        ("k", "acknowledge"),
        ("f", "trigger"),
    ]
    assert "payload" not in events[0]
    assert "payload" not in events[1]


def test_email_message() -> None:
    message = channels.email_message(
        note(alert(state="resolved", resolved_at=T0 + 60_000), kind="resolved"),
        sender="linepulse@plant.example",
        to="ana@plant.example",
    )
    assert message["To"] == "ana@plant.example"
    assert message["From"] == "linepulse@plant.example"
    assert message["Subject"] == "[RESOLVED] oee_low on press-1: 0.52"
    assert message["Message-ID"] == "<k-resolved@plant.example>"
    assert message.get_content_type() == "text/plain"
    text = message.get_content()
    assert "resolved:    2024-05-01T06:01:00.000Z" in text
    assert "runbook:     https://wiki.example/oee" in text


def test_alertmanager_end_only_on_resolve() -> None:
    firing, resolved = channels.alertmanager_alerts(
        note(alert(), alert("b", state="resolved", resolved_at=T0 + 5000, runbook=None))
    )
    assert set(firing) == {"labels", "annotations", "startsAt"}
    assert firing["labels"]["alertname"] == "oee_low"
    assert "team" not in firing["labels"]
    assert resolved["endsAt"] == "2024-05-01T06:00:05.000Z"
    assert resolved["annotations"] == {"summary": "oee_low on press-1: 0.52", "value": "0.52"}


def test_alertmanager_labels_get_an_alertname() -> None:
    bare = alert()
    bare["labels"] = {"machine": "m1"}
    (item,) = channels.alertmanager_alerts(note(bare), external_url="http://lp/")
    assert item["labels"] == {"machine": "m1", "alertname": "oee_low", "severity": "critical"}
    assert item["generatorURL"] == "http://lp/v1/alerts?fingerprint=a1b2c3d4e5f60718"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://am:9093", "http://am:9093/api/v2/alerts"),
        ("http://am:9093/", "http://am:9093/api/v2/alerts"),
        ("http://am:9093/api/v2/alerts", "http://am:9093/api/v2/alerts"),
    ],
)
def test_alertmanager_url(base: str, url: str) -> None:
    assert channels.alertmanager_url(base) == url


def test_console_line_is_one_line() -> None:
    line = channels.console_line(note(alert(), alert("b", machine="press-2", severity="warning")))
    assert "\n" not in line
    assert (
        line == "2024-05-01T06:00:01Z CRITICAL [FIRING:2] oee_low: L1/press-1, L1/press-2 (to ana)"
    )


def test_console_line_of_one_alert_says_when_what_and_where() -> None:
    down = {**alert(), "summary": "press-1 on L1 is down\nsince 06:00"}
    line = channels.console_line(note(down, recipient=None))
    assert (
        line
        == "2024-05-01T06:00:01Z CRITICAL [FIRING] L1/press-1: press-1 on L1 is down since 06:00"
    )


NOW = datetime(2024, 5, 1, 6, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("Wed, 01 May 2024 06:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 05:00:00 GMT", 0.0),  # in the past: now
        ("999999", 3600.0),  # capped
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize(
    ("status", "outcome", "after"),
    [
        (200, "delivered", None),
        (202, "delivered", None),
        (204, "delivered", None),
        (301, "failed", None),
        (400, "failed", None),
        (401, "failed", None),
        (404, "failed", None),
        (410, "failed", None),
        (408, "retry", None),
        (429, "retry", 7.0),
        (500, "retry", None),
        (502, "retry", None),
        (503, "retry", None),
    ],
)
def test_http_status_classification(status: int, outcome: str, after: float | None) -> None:
    result = classify_http(status, httpx.Headers({"Retry-After": "7"}), "invalid_payload", NOW)
    assert result.status == outcome
    if status == 429:
        assert result.retry_after_s == after
    if outcome != "delivered":
        assert result.reason == f"HTTP {status}: invalid_payload"


def test_backoff_doubles_from_one_second_to_five_minutes_with_jitter() -> None:
    rng = random.Random(7)
    for attempt in range(1, 30):
        ceiling = min(300.0, 2.0 ** (attempt - 1))
        delays = [backoff_s(attempt, rng, base=1.0, cap=300.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not constant
    assert backoff_s(10_000, rng, base=1.0, cap=300.0) <= 300.0


def report_note(**extra: str) -> Notification:
    """A shift report as the sender queues it (services/alerts/reports.py)."""
    return Notification(
        key="report/line-1/2026-11-02/early/mail/max",
        kind="report",
        channel="mail",
        recipient="max",
        alerts=(),
        group="report/line-1",
        created_at=T0,
        extra={
            "subject": "Shift report line-1 early 2026-11-02: OEE 74.8 %, output 18,848",
            "html": "<html><body><h1>line-1</h1></body></html>",
            "text": "line-1 · early shift · 2026-11-02\nOEE 74.8 %\n",
            "report": {"line": "line-1"},
            **extra,
        },
    )


def test_a_mailed_report_is_html_with_a_text_part_and_its_pdf_attached() -> None:
    pdf = b"%PDF-1.4 the report"
    note = report_note(pdf=base64.b64encode(pdf).decode(), pdf_name="shift-report_x.pdf")
    message = channels.email_message(note, sender="lp@plant.example", to="max@plant.example")
    assert message["Subject"].startswith("Shift report line-1 early")
    kinds = [part.get_content_type() for part in message.walk()]
    assert kinds == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
        "text/html",
        "application/pdf",
    ]
    (attached,) = list(message.iter_attachments())
    assert attached.get_filename() == "shift-report_x.pdf"
    assert attached.get_content() == pdf


def test_a_report_without_a_pdf_is_mailed_without_an_attachment() -> None:
    message = channels.email_message(report_note(), sender="lp@plant.example", to="m@p.example")
    assert [part.get_content_type() for part in message.walk()] == [
        "multipart/alternative",
        "text/plain",
        "text/html",
    ]


def test_a_report_on_slack_is_its_subject_and_figures() -> None:
    body = channels.slack_payload(report_note(), slack_user="U024BE7LH")
    assert (
        body["text"]
        == "<@U024BE7LH> Shift report line-1 early 2026-11-02: OEE 74.8 %, output 18,848"
    )
    header, figures, mention = body["blocks"]
    assert header["text"]["text"].startswith("Shift report line-1 early")
    assert "OEE 74.8 %" in figures["text"]["text"]
    assert mention["text"]["text"] == "<@U024BE7LH>"
    assert len(channels.slack_payload(report_note(), slack_user=None)["blocks"]) == 2
