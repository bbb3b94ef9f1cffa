"""The outbox and the channels against real receivers on loopback: HTTP receivers we
script (webhook, Slack, PagerDuty formats), aiosmtpd, and Debian's Prometheus Alertmanager.

Retry delays are shortened (`retry_base_s`) so outages take a fraction of a second; every
wait is on an observed effect with a generous limit that only catches a hang.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from linepulse.alerting import AlertSettings, Channel, Person
from linepulse.runtime import free_loopback_ports
from linepulse.sources import Credentials
from services.alerts.metrics import AlertMetrics
from services.alerts.model import Notification
from services.alerts.outbox import Outbox
from tests.integration.receivers import HttpReceiver, Reply, Request, SmtpReceiver

pytestmark = pytest.mark.integration


def fast_outbox(
    path: Path,
    config: AlertSettings,
    metrics: AlertMetrics,
    *,
    external_url: str = "",
    am_resend_interval_s: float = 60.0,
) -> Outbox:
    """An outbox whose retries come after 25-400 ms instead of 0.5 s-5 min."""
    return Outbox(
        path,
        config,
        metrics,
        external_url=external_url,
        am_resend_interval_s=am_resend_interval_s,
        retry_base_s=0.05,
        retry_cap_s=0.4,
    )


def now_ms() -> int:
    return int(time.time() * 1000)


def alert(fp: str, *, state: str = "firing", machine: str = "press-1") -> dict[str, Any]:
    started = now_ms() - 60_000
    return {
        "fingerprint": fp,
        "rule": "oee_low",
        "labels": {
            "alertname": "oee_low",
            "severity": "critical",
            "line": "L1",
            "machine": machine,
        },
        "state": state,
        "severity": "critical",
        "summary": f"OEE low on {machine}",
        "runbook": "https://wiki.example/oee",
        "value": 0.5,
        "pending_since": started - 600_000,
        "fired_at": started,
        "resolved_at": now_ms() - 1000 if state == "resolved" else None,
        "acked_by": None,
    }


def note(
    key: str,
    channel: str,
    *alerts: dict[str, Any],
    kind: str = "firing",
    recipient: str | None = "ana",
    group: str = "oee_low/L1",
) -> Notification:
    return Notification(
        key=key,
        kind=kind,  # type: ignore[arg-type]
        channel=channel,
        recipient=recipient,
        alerts=alerts or (alert("fp-" + key),),
        group=group,
        created_at=now_ms(),
    )


def settings(*channels: Channel) -> AlertSettings:
    return AlertSettings(
        channels=channels,
        people={
            "ana": Person(
                name="Ana",
                email="ana@plant.example",
                slack_user="U024BE7LH",
                channels=tuple(c.id for c in channels),
            )
        },
    )


@asynccontextmanager
async def running(outbox: Outbox) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(outbox.run(stop), name="test-outbox")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def settled(check: Callable[[], bool], limit_s: float = 30) -> None:
    """Poll a condition on the outbox's own state (it has no hook to wait on)."""
    async with asyncio.timeout(limit_s):
        while not check():
            await asyncio.sleep(0.01)


def keys(requests: list[Request]) -> Counter[str]:
    return Counter(r.headers["idempotency-key"] for r in requests if r.accepted)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_webhook_slack_and_pagerduty_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_PD_KEY", "R0UT1NGKEY")
    registry = CollectorRegistry()
    async with (
        HttpReceiver() as hook,
        HttpReceiver() as slack,
        HttpReceiver(default=Reply(202, '{"status":"success"}')) as pd,
    ):
        config = settings(
            Channel(id="hook", type="webhook", url=hook.url + "/hook"),
            Channel(id="slack", type="slack", url=slack.url + "/services/T/B/X"),
            Channel(
                id="pd", type="pagerduty", url=pd.url + "/v2/enqueue", routing_key_env="TEST_PD_KEY"
            ),
        )
        outbox = fast_outbox(tmp_path / "outbox.db", config, AlertMetrics.create(registry))
        fired = alert("fp1")
        resolved = {**fired, "state": "resolved", "resolved_at": now_ms()}
        async with running(outbox):
            for channel in ("hook", "slack", "pd"):
                outbox.enqueue([note(f"{channel}-fire", channel, fired)])
                outbox.enqueue([note(f"{channel}-res", channel, resolved, kind="resolved")])
            for receiver in (hook, slack, pd):
                await receiver.wait_for(lambda rs: len([r for r in rs if r.accepted]) == 2)
        outbox.close()

    fire, res = (r.json() for r in hook.requests)
    assert hook.requests[0].path == "/hook"
    assert fire["version"] == "4"
    assert (fire["status"], fire["kind"], fire["receiver"]) == ("firing", "firing", "ana")
    assert fire["alerts"][0]["fingerprint"] == "fp1"
    assert fire["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
    assert (res["status"], res["kind"]) == ("resolved", "resolved")
    assert res["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"
    assert hook.requests[0].headers["content-type"] == "application/json"
    assert keys(hook.requests) == {"hook-fire": 1, "hook-res": 1}

    slack_fire = slack.requests[0].json()
    assert slack_fire["text"] == "<@U024BE7LH> [FIRING] OEE low on press-1"
    assert slack_fire["blocks"][0]["type"] == "header"

    trigger, resolve = (r.json() for r in pd.requests)
    assert pd.requests[0].path == "/v2/enqueue"
    assert trigger["routing_key"] == "R0UT1NGKEY"
    assert (trigger["event_action"], trigger["dedup_key"]) == ("trigger", "fp1")
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "press-1"
    assert resolve == {"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "fp1"}

    assert [r.status for r in outbox_rows(tmp_path, config)] == ["delivered"] * 6
    for channel in ("hook", "slack", "pd"):
        assert sample(registry, "linepulse_alerts_notifications_sent_total", channel=channel) == 2
    assert sample(registry, "linepulse_alerts_outbox_depth") == 0


def outbox_rows(tmp_path: Path, config: AlertSettings) -> list[Any]:
    reopened = fast_outbox(tmp_path / "outbox.db", config, AlertMetrics.create(CollectorRegistry()))
    try:
        return list(reopened.rows())
    finally:
        reopened.close()


# aiosmtpd 1.4.6 sets its own deprecated Session.login_data on AUTH, and warns that AUTH
# without TLS is unsafe (it is loopback here): its warnings, not ours.
@pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning",
    "ignore:Requiring AUTH while not requiring TLS:UserWarning",
)
async def test_email_with_login_after_a_temporary_smtp_failure(tmp_path: Path) -> None:
    async with SmtpReceiver(fail_first=1, users={"alerts": "s3cret"}) as smtp:
        config = settings(
            Channel(
                id="mail",
                type="email",
                smtp_host="127.0.0.1",
                smtp_port=smtp.port,
                starttls=False,  # plain SMTP on loopback; STARTTLS is the default
                credentials=Credentials(username="alerts", password="s3cret"),
                sender="linepulse@plant.example",
            )
        )
        outbox = fast_outbox(
            tmp_path / "outbox.db", config, AlertMetrics.create(CollectorRegistry())
        )
        async with running(outbox):
            outbox.enqueue([note("mail-1", "mail")])
            await smtp.wait_for(1)
        (row,) = outbox.rows()
        outbox.close()
    assert smtp.refused == 1
    (mail,) = smtp.mails
    assert mail.rcpt_tos == ["ana@plant.example"]
    assert mail.mail_from == "linepulse@plant.example"
    assert mail.authenticated_as == "alerts"
    assert mail.message["Subject"] == "[FIRING] OEE low on press-1"
    assert mail.message["Message-ID"] == "<mail-1@plant.example>"
    assert "fingerprint: fp-mail-1" in mail.message.get_payload()
    assert (row.status, row.attempts) == ("delivered", 2)
    assert row.last_error is None


async def test_outage_then_recovery_delivers_each_notification_once(tmp_path: Path) -> None:
    script = [Reply(500), Reply(502), Reply(503), Reply(429, "slow down", {"Retry-After": "1"})]
    registry = CollectorRegistry()
    async with HttpReceiver(script=script) as hook:
        config = settings(Channel(id="hook", type="webhook", url=hook.url))
        outbox = fast_outbox(tmp_path / "outbox.db", config, AlertMetrics.create(registry))
        batch = [note(f"n{i}", "hook", group=f"g{i % 3}") for i in range(9)]
        assert outbox.enqueue(batch) == 9
        assert outbox.enqueue(batch[:4]) == 0  # the same state changes again: ignored
        assert outbox.depth() == 9
        async with running(outbox):
            await hook.wait_for(lambda rs: len(keys(rs)) == 9)
            assert outbox.enqueue(batch) == 0
        assert outbox.depth() == 0
        outbox.close()

    assert keys(hook.requests) == {f"n{i}": 1 for i in range(9)}
    assert [r.status for r in hook.requests[:4]] == [500, 502, 503, 429]
    # Within a group, enqueue order holds.
    for group in range(3):
        sent = [r.json()["key"] for r in hook.accepted() if r.json()["groupKey"] == f"g{group}"]
        assert sent == [f"n{i}" for i in range(group, 9, 3)]
    assert sample(registry, "linepulse_alerts_notifications_sent_total", channel="hook") == 9
    assert sample(registry, "linepulse_alerts_notification_retries_total", channel="hook") == 4


async def test_retry_after_holds_back_the_whole_channel(tmp_path: Path) -> None:
    limited = Reply(429, "rate limited", {"Retry-After": "1"})
    async with HttpReceiver(script=[limited]) as hook:
        config = settings(Channel(id="pd", type="webhook", url=hook.url))
        outbox = fast_outbox(
            tmp_path / "outbox.db", config, AlertMetrics.create(CollectorRegistry())
        )
        async with running(outbox):
            outbox.enqueue([note("first", "pd", group="g0")])
            await settled(lambda: outbox.rows()[0].attempts == 1)  # the 429 is recorded
            outbox.enqueue([note("second", "pd", group="g1")])  # another lane, same channel
            await hook.wait_for(lambda rs: len(keys(rs)) == 2)
        outbox.close()
    assert [r.status for r in hook.requests] == [429, 200, 200]
    # Without the header the retry would come after 25-50 ms; with it, neither lane sends
    # for a second (a lower bound: safe on a slow machine).
    assert all(r.at - hook.requests[0].at >= 0.9 for r in hook.requests[1:])


async def test_a_400_is_not_retried_and_does_not_block_the_group(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    async with HttpReceiver(script=[Reply(400, "invalid_payload")]) as hook:
        config = settings(Channel(id="slack", type="slack", url=hook.url))
        outbox = fast_outbox(tmp_path / "outbox.db", config, AlertMetrics.create(registry))
        async with running(outbox):
            outbox.enqueue([note("bad", "slack"), note("good", "slack")])
            await hook.wait_for(lambda rs: len(rs) == 2)
        rows = {row.key: row for row in outbox.rows()}
        outbox.close()
    assert [r.status for r in hook.requests] == [400, 200]
    assert (rows["bad"].status, rows["bad"].attempts) == ("failed", 1)
    assert rows["bad"].last_error == "HTTP 400: invalid_payload"
    assert rows["good"].status == "delivered"
    failed = "linepulse_alerts_notifications_failed_total"
    assert sample(registry, failed, channel="slack", reason="rejected") == 1
    assert sample(registry, "linepulse_alerts_outbox_depth") == 0


async def test_restart_mid_outage_delivers_everything_once(tmp_path: Path) -> None:
    async with HttpReceiver(default=Reply(503, "down")) as hook:
        config = settings(Channel(id="hook", type="webhook", url=hook.url))
        first = fast_outbox(
            tmp_path / "outbox.db", config, AlertMetrics.create(CollectorRegistry())
        )
        first.enqueue([note(f"n{i}", "hook", group=f"g{i % 2}") for i in range(4)])
        async with running(first):
            await hook.wait_for(lambda rs: len(rs) >= 4)  # both groups failed at least once
        first.close()
        assert not hook.accepted()

        hook.default = Reply(200)  # the receiver is back
        second = fast_outbox(
            tmp_path / "outbox.db", config, AlertMetrics.create(CollectorRegistry())
        )
        assert second.depth() == 4
        async with running(second):
            await hook.wait_for(lambda rs: len(keys(rs)) == 4)
        assert second.depth() == 0
        second.close()

        # A third life sends a new notification, and none of the delivered ones again:
        # pending rows go in enqueue order, so a re-send would come before it.
        third = fast_outbox(
            tmp_path / "outbox.db", config, AlertMetrics.create(CollectorRegistry())
        )
        assert third.depth() == 0
        async with running(third):
            third.enqueue([note("n4", "hook", group="g0")])
            await hook.wait_for(lambda rs: "n4" in keys(rs))
        third.close()
    assert keys(hook.requests) == {f"n{i}": 1 for i in range(5)}


async def test_alertmanager_firing_alerts_are_re_posted_until_resolved(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    async with HttpReceiver() as am:
        config = settings(Channel(id="am", type="alertmanager", url=am.url))
        outbox = fast_outbox(
            tmp_path / "outbox.db",
            config,
            AlertMetrics.create(registry),
            am_resend_interval_s=0.05,
        )
        fired = alert("fp-am")
        async with running(outbox):
            outbox.enqueue([note("am-fire", "am", fired)])
            await am.wait_for(lambda rs: len(rs) >= 3)  # the notification and re-posts
            resolved = {**fired, "state": "resolved", "resolved_at": now_ms()}
            outbox.enqueue([note("am-res", "am", resolved, kind="resolved")])
            await am.wait_for(lambda rs: any("endsAt" in r.json()[0] for r in rs))
        # run() has returned: the resolve's 2xx is recorded
        assert outbox.alertmanager_firing("am") == []
        assert outbox.depth() == 0
        outbox.close()
    bodies = [r.json() for r in am.requests]
    assert all(r.path == "/api/v2/alerts" for r in am.requests)
    ended = next(i for i, b in enumerate(bodies) if "endsAt" in b[0])
    assert [b[0]["labels"]["alertname"] for b in bodies] == ["oee_low"] * len(bodies)
    assert all("endsAt" not in b[0] for b in bodies[:ended])
    assert bodies[1:ended] == [bodies[0]] * (ended - 1)  # re-posts repeat the first post
    assert sample(registry, "linepulse_alerts_alertmanager_resends_total", channel="am") >= 2


# -- a real Prometheus Alertmanager ---------------------------------------------------------

AM_BINARY = "/usr/bin/prometheus-alertmanager"
AM_CONFIG = """\
route:
  receiver: blackhole
  group_wait: 1s
receivers:
  - name: blackhole
"""


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """Debian's Alertmanager on a free loopback port, no clustering; yields its URL."""
    binary = shutil.which("prometheus-alertmanager") or AM_BINARY
    if not Path(binary).is_file():
        pytest.fail(
            "needs Prometheus Alertmanager (Debian: apt-get install prometheus-alertmanager)",
            pytrace=False,
        )
    (port,) = free_loopback_ports(1)
    (tmp_path / "am.yml").write_text(AM_CONFIG)
    log = (tmp_path / "am.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603 - Debian's binary, our flags
        [
            binary,
            f"--config.file={tmp_path / 'am.yml'}",
            f"--storage.path={tmp_path / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"alertmanager exited: {(tmp_path / 'am.log').read_text()}")
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"alertmanager not ready: {(tmp_path / 'am.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


async def am_alerts(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    response = await client.get(url + "/api/v2/alerts")
    response.raise_for_status()
    alerts: list[dict[str, Any]] = response.json()
    return alerts


async def until(check: Any, limit_s: float = 30) -> None:
    """Poll an async predicate (Alertmanager has no push for its own state)."""
    async with asyncio.timeout(limit_s):
        while not await check():
            await asyncio.sleep(0.1)


async def test_real_alertmanager_fires_then_resolves(tmp_path: Path, alertmanager: str) -> None:
    config = settings(Channel(id="am", type="alertmanager", url=alertmanager))
    outbox = fast_outbox(
        tmp_path / "outbox.db",
        config,
        AlertMetrics.create(CollectorRegistry()),
        external_url="http://linepulse:8080",
    )
    fired = alert("fp-real", machine="press-7")
    async with httpx.AsyncClient() as client, running(outbox):
        outbox.enqueue([note("real-fire", "am", fired)])

        async def active() -> bool:
            found = [
                a
                for a in await am_alerts(client, alertmanager)
                if a["labels"].get("machine") == "press-7"
            ]
            return bool(found) and found[0]["status"]["state"] == "active"

        await until(active)
        (seen,) = await am_alerts(client, alertmanager)
        assert seen["labels"] == {
            "alertname": "oee_low", "severity": "critical", "line": "L1", "machine": "press-7"
        }  # fmt: skip
        assert seen["annotations"]["summary"] == "OEE low on press-7"
        assert seen["annotations"]["runbook_url"] == "https://wiki.example/oee"
        assert seen["generatorURL"] == "http://linepulse:8080/v1/alerts?fingerprint=fp-real"
        assert seen["endsAt"] > seen["startsAt"]  # Alertmanager's resolve_timeout ahead

        resolved = {**fired, "state": "resolved", "resolved_at": now_ms() - 1000}
        outbox.enqueue([note("real-res", "am", resolved, kind="resolved")])

        async def gone() -> bool:
            # Alertmanager's API leaves out alerts whose endsAt has passed.
            return not await am_alerts(client, alertmanager)

        await until(gone)
    assert [row.status for row in outbox.rows()] == ["delivered", "delivered"]
    assert outbox.alertmanager_firing("am") == []
    outbox.close()
