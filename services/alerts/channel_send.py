"""Sending one notification through one channel, and what the answer means for a retry.

Every send ends in an `Outcome`: delivered (a 2xx, an SMTP 250), retry (the receiver or
the network may recover: 5xx, 408, 429, timeouts, refused connections, SMTP 4xx), or
failed (the receiver rejected the request itself: any other 4xx, SMTP 5xx, a channel
that cannot be addressed). Retrying a rejected request would only repeat the rejection,
so a 400 is final and reported with its reason.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiosmtplib
import httpx

from linepulse.alerting import AlertSettings, Channel
from services.alerts import channels
from services.alerts.model import Notification

log = logging.getLogger(__name__)

# A Retry-After beyond this is taken as this: a bogus header must not park a channel.
MAX_RETRY_AFTER_S = 3600.0
_REASON_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    status: Literal["delivered", "retry", "failed"]
    reason: str = ""
    retry_after_s: float | None = None  # from a 429's Retry-After, in seconds


DELIVERED = Outcome("delivered")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110
    §10.2.3); None when absent or unreadable; never negative, at most an hour."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return min(max((when - now).total_seconds(), 0.0), MAX_RETRY_AFTER_S)


def classify_http(status: int, headers: httpx.Headers, body: str, now: datetime) -> Outcome:
    """What an HTTP answer means for the outbox."""
    if 200 <= status < 300:
        return DELIVERED
    reason = f"HTTP {status}: {body.strip()[:_REASON_CHARS]}"
    if status == 429:
        return Outcome("retry", reason, parse_retry_after(headers.get("retry-after"), now))
    if status == 408 or status >= 500:
        return Outcome("retry", reason)
    # 3xx (httpx does not follow redirects: the URL is wrong) and the other 4xx
    return Outcome("failed", reason)


class ChannelError(Exception):
    """A channel that cannot send at all as configured (no address, no routing key)."""


def pagerduty_routing_key(channel: Channel) -> str:
    """The integration key, read when sending (a secret: never logged)."""
    if channel.routing_key_file is not None:
        try:
            return channel.routing_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ChannelError(f"routing_key_file {channel.routing_key_file}: {exc}") from exc
    key = os.environ.get(channel.routing_key_env or "")
    if not key:
        raise ChannelError(f"environment variable {channel.routing_key_env} is not set")
    return key


async def _post(
    client: httpx.AsyncClient,
    channel: Channel,
    url: str,
    body: Any,
    key: str,
) -> Outcome:
    try:
        response = await client.post(
            url,
            json=body,
            timeout=channel.timeout_s,
            # Lets a receiver drop a repeat after an uncertain send (timeout after the body).
            headers={"Idempotency-Key": key, "User-Agent": "LinePulse-alerts"},
        )
    except httpx.TimeoutException as exc:
        return Outcome("retry", f"timeout: {type(exc).__name__}")
    except httpx.TransportError as exc:
        return Outcome("retry", f"connection: {type(exc).__name__}: {exc}"[:_REASON_CHARS])
    return classify_http(response.status_code, response.headers, response.text, _now())


def _now() -> datetime:
    return datetime.now(tz=UTC)


async def _send_email(channel: Channel, notification: Notification, to: str) -> Outcome:
    if channel.smtp_host is None or channel.sender is None:  # the config validator ensures both
        raise ChannelError("an email channel needs smtp_host and sender")
    message = channels.email_message(notification, sender=channel.sender, to=to)
    username = channel.credentials.username if channel.credentials else None
    try:
        password = channel.credentials.secret() if channel.credentials else None
    except (OSError, ValueError) as exc:
        raise ChannelError(f"SMTP password: {exc}") from exc
    try:
        await aiosmtplib.send(
            message,
            hostname=channel.smtp_host,
            port=channel.smtp_port,
            # True: STARTTLS is required (fail rather than send a password in clear);
            # False: plain SMTP, for a relay on localhost.
            start_tls=channel.starttls,
            username=username,
            password=password,
            timeout=channel.timeout_s,
        )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [err.code for err in exc.recipients]
        status: Literal["retry", "failed"] = (
            "retry" if all(400 <= c < 500 for c in codes) else "failed"
        )
        return Outcome(status, f"SMTP recipients refused: {codes}")
    except aiosmtplib.SMTPResponseException as exc:
        status = "retry" if 400 <= exc.code < 500 else "failed"
        return Outcome(status, f"SMTP {exc.code}: {exc.message}"[:_REASON_CHARS])
    except (aiosmtplib.SMTPException, OSError) as exc:
        return Outcome("retry", f"SMTP: {type(exc).__name__}: {exc}"[:_REASON_CHARS])
    return DELIVERED


async def send(
    notification: Notification,
    channel: Channel,
    settings: AlertSettings,
    client: httpx.AsyncClient,
    *,
    external_url: str = "",
) -> Outcome:
    """Send one notification through `channel`; never raises for a channel's failure."""
    person = settings.people.get(notification.recipient or "")
    try:
        if channel.type == "console":
            # A page is output, not a log record: shown whatever the log level.
            sys.stdout.write(channels.console_line(notification) + "\n")
            sys.stdout.flush()
            return DELIVERED
        if channel.type == "webhook":
            receiver = notification.recipient or channel.id
            body: Any = channels.webhook_payload(
                notification, receiver=receiver, external_url=external_url
            )
            return await _post(client, channel, str(channel.url), body, notification.key)
        if channel.type == "slack":
            body = channels.slack_payload(
                notification,
                slack_user=person.slack_user if person else None,
                external_url=external_url,
            )
            return await _post(client, channel, str(channel.url), body, notification.key)
        if channel.type == "alertmanager":
            body = channels.alertmanager_alerts(notification, external_url=external_url)
            url = channels.alertmanager_url(str(channel.url))
            return await _post(client, channel, url, body, notification.key)
        if channel.type == "pagerduty":
            url = channel.url or channels.PAGERDUTY_URL
            events = channels.pagerduty_events(
                notification, routing_key=pagerduty_routing_key(channel)
            )
            # One event per alert; a retry re-sends all of them, which PagerDuty dedups
            # by dedup_key and action.
            for index, event in enumerate(events):
                outcome = await _post(client, channel, url, event, f"{notification.key}/{index}")
                if outcome.status != "delivered":
                    return outcome
            return DELIVERED
        if channel.type == "email":
            if person is None or not person.email:
                raise ChannelError(f"recipient {notification.recipient!r} has no email address")
            return await _send_email(channel, notification, person.email)
    except ChannelError as exc:
        return Outcome("failed", str(exc))
    return Outcome("failed", f"unknown channel type {channel.type}")
