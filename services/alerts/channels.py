"""What each channel receives for a notification: pure functions, no I/O, no clock.

The wire formats are other people's contracts, so each function follows the receiving
side's documentation rather than our own model:

- generic webhook: the Prometheus Alertmanager webhook body (`version` "4"), so that any
  tool that already takes Alertmanager webhooks takes ours; plus `kind` and `key` (the
  notification's idempotency key) which Alertmanager does not have.
- Slack incoming webhook: `text` (the fallback shown in notifications) and Block Kit
  `blocks`; the recipient is mentioned as `<@U…>` so that Slack notifies them.
- PagerDuty Events API v2: one event per alert, `dedup_key` = the alert fingerprint so
  that trigger, acknowledge and resolve act on one incident.
- email: an RFC 5322 message, plain text, to the person's address (a shift report: its
  page as HTML with a text part, and its PDF attached where one was printed).
- Alertmanager `POST /api/v2/alerts`: a list of postable alerts; `endsAt` only on resolve
  (while firing, Alertmanager times an alert out after its `resolve_timeout` unless the
  alert is posted again, which the outbox does).

Times in the model are epoch milliseconds (UTC); every format here wants RFC 3339.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email.message import EmailMessage, MIMEPart
from typing import Any

from linepulse.calendar import rfc3339
from services.alerts.model import Notification

# Alertmanager's webhook sends this for "no end yet" (Go's zero time).
ZERO_TIME = "0001-01-01T00:00:00Z"
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
# Block Kit allows 50 blocks per message; beyond this many alerts we summarise.
SLACK_MAX_ALERTS = 20

_PD_SEVERITY = {"critical": "critical", "error": "error", "warning": "warning", "info": "info"}


def alert_status(alert: dict[str, Any]) -> str:
    """`firing` or `resolved`: an acknowledged alert is still firing (Alertmanager's view)."""
    return "resolved" if alert["state"] == "resolved" else "firing"


def _started(alert: dict[str, Any]) -> int:
    started = alert.get("fired_at") or alert["pending_since"]
    return int(started)


def _ended(alert: dict[str, Any], fallback_ms: int) -> int:
    ended = alert.get("resolved_at") or fallback_ms
    return int(ended)


def _labels(alert: dict[str, Any]) -> dict[str, str]:
    """The alert's labels, with `alertname` (Alertmanager requires it) and without empty
    values (Prometheus treats an empty label as absent)."""
    labels = {str(k): str(v) for k, v in alert["labels"].items() if v not in (None, "")}
    labels.setdefault("alertname", str(alert["rule"]))
    labels.setdefault("severity", str(alert["severity"]))
    return labels


def _annotations(alert: dict[str, Any]) -> dict[str, str]:
    annotations = {"summary": str(alert["summary"])}
    if alert.get("runbook"):
        annotations["runbook_url"] = str(alert["runbook"])
    if alert.get("value") is not None:
        annotations["value"] = str(alert["value"])
    if alert.get("acked_by"):
        annotations["acknowledged_by"] = str(alert["acked_by"])
    return annotations


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    """Key/value pairs present with the same value in every dict (Alertmanager's
    commonLabels / commonAnnotations)."""
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def generator_url(external_url: str, fingerprint: str) -> str:
    """Where a person can see the alert: our API, if its external URL is configured."""
    if not external_url:
        return ""
    return f"{external_url.rstrip('/')}/v1/alerts?fingerprint={fingerprint}"


def webhook_payload(
    notification: Notification, *, receiver: str, external_url: str = ""
) -> dict[str, Any]:
    """The Alertmanager webhook body (version 4) for a notification, plus `kind` and `key`;
    for a shift report, `kind`, `key`, `receiver`, `subject` and the report's JSON."""
    if notification.kind == "report":
        return {
            "kind": "report",
            "key": notification.key,
            "receiver": receiver,
            "subject": notification.extra["subject"],
            "report": notification.extra["report"],
        }
    alerts = []
    for alert in notification.alerts:
        status = alert_status(alert)
        alerts.append(
            {
                "status": status,
                "labels": _labels(alert),
                "annotations": _annotations(alert),
                "startsAt": rfc3339(_started(alert)),
                "endsAt": (
                    rfc3339(_ended(alert, notification.created_at))
                    if status == "resolved"
                    else ZERO_TIME
                ),
                "generatorURL": generator_url(external_url, alert["fingerprint"]),
                "fingerprint": alert["fingerprint"],
            }
        )
    common_labels = _common([a["labels"] for a in alerts])
    group_labels = {k: common_labels[k] for k in ("alertname", "line") if k in common_labels}
    return {
        "version": "4",
        "groupKey": notification.group,
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": _common([a["annotations"] for a in alerts]),
        "externalURL": external_url,
        "alerts": alerts,
        "kind": notification.kind,
        "key": notification.key,
    }


def _where(alert: dict[str, Any]) -> str:
    labels = alert["labels"]
    parts = [labels[k] for k in ("site", "line", "machine") if labels.get(k)]
    return "/".join(parts) or "site"


def _title(notification: Notification) -> str:
    """`[FIRING] summary` or `[RESOLVED:3] rule on L1`, as Alertmanager's templates do."""
    tag = notification.kind.upper()
    count = len(notification.alerts)
    if count == 1:
        return f"[{tag}] {notification.alerts[0]['summary']}"
    first = notification.alerts[0]
    line = first["labels"].get("line")
    return f"[{tag}:{count}] {first['rule']}" + (f" on {line}" if line else "")


def slack_payload(
    notification: Notification, *, slack_user: str | None, external_url: str = ""
) -> dict[str, Any]:
    """A Slack incoming-webhook message: fallback `text` and Block Kit `blocks` (a shift
    report: its subject and headline figures, the text part of its mail)."""
    mention = f"<@{slack_user}> " if slack_user else ""
    if notification.kind == "report":
        subject = notification.extra["subject"]
        figures = notification.extra["text"]
        return {
            "text": f"{mention}{subject}",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": subject[:150]}},
                # a section's text is at most 3000 characters
                {"type": "section", "text": {"type": "mrkdwn", "text": f"```{figures[:2990]}```"}},
                *(
                    [{"type": "section", "text": {"type": "mrkdwn", "text": mention.strip()}}]
                    if mention
                    else []
                ),
            ],
        }
    title = _title(notification)
    blocks: list[dict[str, Any]] = [
        # header text is plain_text, at most 150 characters
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
    ]
    shown = notification.alerts[:SLACK_MAX_ALERTS]
    for alert in shown:
        lines = [
            f"*{alert['summary']}*",
            f"{alert_status(alert)} · {alert['severity']} · {_where(alert)}",
        ]
        if alert.get("value") is not None:
            lines.append(f"value: `{alert['value']}`")
        if alert.get("acked_by"):
            lines.append(f"acknowledged by {alert['acked_by']}")
        if alert.get("runbook"):
            lines.append(f"<{alert['runbook']}|Runbook>")
        url = generator_url(external_url, alert["fingerprint"])
        if url:
            lines.append(f"<{url}|Alert {alert['fingerprint']}>")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}})
    if len(notification.alerts) > len(shown):
        more = len(notification.alerts) - len(shown)
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"and {more} more"}]}
        )
    if mention:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": mention.strip()}})
    return {"text": f"{mention}{title}", "blocks": blocks}


def pagerduty_action(alert: dict[str, Any]) -> str:
    """`trigger`, `acknowledge` or `resolve`, from the alert's own state: in a grouped
    notification one alert may resolve while the others still fire."""
    state = alert["state"]
    if state == "resolved":
        return "resolve"
    if state == "acknowledged":
        return "acknowledge"
    return "trigger"


def pagerduty_events(notification: Notification, *, routing_key: str) -> list[dict[str, Any]]:
    """PagerDuty Events API v2 bodies, one per alert. `payload` goes with `trigger` only:
    PagerDuty ignores it on acknowledge and resolve, which act on the `dedup_key`."""
    events = []
    for alert in notification.alerts:
        action = pagerduty_action(alert)
        event: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": action,
            "dedup_key": alert["fingerprint"],
        }
        if action == "trigger":
            labels = alert["labels"]
            payload: dict[str, Any] = {
                "summary": str(alert["summary"])[:1024],  # PagerDuty truncates at 1024
                "source": labels.get("machine") or labels.get("line") or "linepulse",
                "severity": _PD_SEVERITY.get(str(alert["severity"]), "warning"),
                "timestamp": rfc3339(_started(alert)),
                "component": labels.get("machine") or labels.get("line") or "",
                "group": labels.get("line") or "",
                "class": alert["rule"],
                "custom_details": {
                    "labels": dict(labels),
                    "value": alert.get("value"),
                    "kind": notification.kind,
                    "escalation": notification.escalation,
                },
            }
            event["payload"] = payload
            event["client"] = "LinePulse"
            if alert.get("runbook"):
                event["links"] = [{"href": alert["runbook"], "text": "Runbook"}]
        events.append(event)
    return events


def email_message(notification: Notification, *, sender: str, to: str) -> EmailMessage:
    """A plain-text email (a shift report: its page as HTML, with a text part); Message-ID
    is derived from the notification key, so a receiving system can drop a duplicate
    after an uncertain send (timeout after DATA)."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    report = notification.kind == "report"
    message["Subject"] = notification.extra["subject"] if report else _title(notification)
    domain = sender.rpartition("@")[2] or "linepulse"
    message["Message-ID"] = f"<{notification.key}@{domain}>"
    message["X-LinePulse-Kind"] = notification.kind
    if report:
        extra = notification.extra
        message.set_content(extra["text"])
        message.add_alternative(extra["html"], subtype="html")
        if extra.get("images"):  # the charts, which the page shows by content id
            page = next(p for p in message.walk() if p.get_content_type() == "text/html")
            assert isinstance(page, MIMEPart)  # noqa: S101 - what add_alternative made
            for image in extra["images"]:
                page.add_related(
                    base64.b64decode(image["png"]),
                    maintype="image",
                    subtype="png",
                    cid=f"<{image['cid']}>",
                    filename=image["name"],
                    disposition="inline",
                )
        if "pdf" in extra:
            message.add_attachment(
                base64.b64decode(extra["pdf"]),
                maintype="application",
                subtype="pdf",
                filename=extra["pdf_name"],
            )
        return message
    parts = []
    for alert in notification.alerts:
        lines = [
            str(alert["summary"]),
            f"  state:       {alert['state']}",
            f"  severity:    {alert['severity']}",
            f"  where:       {_where(alert)}",
            f"  value:       {alert.get('value')}",
            f"  since:       {rfc3339(_started(alert))}",
        ]
        if alert.get("resolved_at"):
            lines.append(f"  resolved:    {rfc3339(int(alert['resolved_at']))}")
        if alert.get("acked_by"):
            lines.append(f"  acked by:    {alert['acked_by']}")
        if alert.get("runbook"):
            lines.append(f"  runbook:     {alert['runbook']}")
        lines.append(f"  fingerprint: {alert['fingerprint']}")
        parts.append("\n".join(lines))
    message.set_content("\n\n".join(parts) + "\n")
    return message


def alertmanager_alerts(
    notification: Notification, *, external_url: str = ""
) -> list[dict[str, Any]]:
    """Alertmanager `POST /api/v2/alerts` body: `endsAt` is set on resolve only, so that a
    firing alert lasts until its `resolve_timeout` and is kept alive by re-posting."""
    body = []
    for alert in notification.alerts:
        item: dict[str, Any] = {
            "labels": _labels(alert),
            "annotations": _annotations(alert),
            "startsAt": rfc3339(_started(alert)),
        }
        if alert_status(alert) == "resolved":
            item["endsAt"] = rfc3339(_ended(alert, notification.created_at))
        url = generator_url(external_url, alert["fingerprint"])
        if url:
            item["generatorURL"] = url
        body.append(item)
    return body


def alertmanager_url(base: str) -> str:
    """The v2 alerts endpoint under a configured Alertmanager address."""
    base = base.rstrip("/")
    return base if base.endswith("/api/v2/alerts") else f"{base}/api/v2/alerts"


def console_line(notification: Notification) -> str:
    """One line per page, for a person at a terminal: when (UTC), the worst severity, what
    happened, where, and whom it pages.

    `2026-05-01T06:00:00Z CRITICAL [FIRING] line-1/filler-1: filler-1 on line-1 is down
    (to shift-lead)`; a group of alerts names its rule and its machines."""
    alerts = notification.alerts
    who = f" (to {notification.recipient})" if notification.recipient else ""
    moment = datetime.fromtimestamp(notification.created_at / 1000, tz=UTC)
    when = moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    if notification.kind == "report":
        return f"{when} REPORT {notification.extra['subject']}{who}"
    severity = max((str(a.get("severity") or "") for a in alerts), key=_severity_rank)
    tag = notification.kind.upper()
    if len(alerts) == 1:
        only = alerts[0]
        what = f"[{tag}] {_place(only)}: {only['summary']}"
    else:
        places = ", ".join(dict.fromkeys(_place(a) for a in alerts))
        what = f"[{tag}:{len(alerts)}] {alerts[0]['rule']}: {places}"
    return f"{when} {severity.upper() or 'ALERT'} {what}{who}".replace("\n", " ")


_SEVERITY_ORDER = ("info", "warning", "error", "critical")


def _severity_rank(severity: str) -> int:
    return _SEVERITY_ORDER.index(severity) if severity in _SEVERITY_ORDER else -1


def _place(alert: dict[str, Any]) -> str:
    """`line/machine` (or the line alone, or `site`): where an alert is on the floor."""
    labels = alert["labels"]
    return "/".join(labels[k] for k in ("line", "machine") if labels.get(k)) or "site"
