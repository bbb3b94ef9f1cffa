"""Prometheus metrics of the alerts service: one bundle, registered on a registry passed in.

`channel` is a channel id from the config and `reason` one of a few fixed words, so the
label sets stay bounded.

| metric | what |
|---|---|
| `linepulse_alerts_notifications_sent_total{channel}` | accepted (2xx, SMTP 250) |
| `linepulse_alerts_notifications_failed_total{channel,reason}` | given up, see below |
| `linepulse_alerts_notification_retries_total{channel}` | failed attempts that will be retried |
| `linepulse_alerts_outbox_depth` | notifications waiting in the outbox |
| `linepulse_alerts_alertmanager_resends_total{channel}` | firing alerts re-posted to Alertmanager |
| `linepulse_alerts{state}` | alerts by state (pending, firing, acknowledged), set by the service |
| `linepulse_alerts_active` | 1 on the instance that evaluates and pages (0 on a standby) |
| `linepulse_spc_mean{chart}` | the newest subgroup's mean of each chart followed live |
| `linepulse_spc_limit{chart,limit}` | its centre line and control limits (`center`, `ucl`, `lcl`) |
| `linepulse_spc_subgroups_total{chart}` | subgroups charted |
| `linepulse_spc_broken_total{chart,rule}` | subgroups that broke each rule |

`reason` of a failure: `rejected` (a 4xx but 408/429, an SMTP 5xx, a channel that cannot
address the recipient) or `attempts` (the channel's `max_attempts` reached). `chart` is a
chart of the config's `spc:` that an `spc` rule follows (`machine/signal`).
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class AlertMetrics:
    sent: Counter
    failed: Counter
    retries: Counter
    outbox_depth: Gauge
    am_resends: Counter
    alerts: Gauge
    active: Gauge
    spc_mean: Gauge
    spc_limit: Gauge
    spc_subgroups: Counter
    spc_broken: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> AlertMetrics:
        return cls(
            sent=Counter(
                "linepulse_alerts_notifications_sent",
                "Notifications a channel accepted",
                ("channel",),
                registry=registry,
            ),
            failed=Counter(
                "linepulse_alerts_notifications_failed",
                "Notifications given up, by reason (rejected, attempts)",
                ("channel", "reason"),
                registry=registry,
            ),
            retries=Counter(
                "linepulse_alerts_notification_retries",
                "Failed delivery attempts that will be retried",
                ("channel",),
                registry=registry,
            ),
            outbox_depth=Gauge(
                "linepulse_alerts_outbox_depth",
                "Notifications waiting in the outbox",
                registry=registry,
            ),
            am_resends=Counter(
                "linepulse_alerts_alertmanager_resends",
                "Firing alerts re-posted to Alertmanager to keep them active",
                ("channel",),
                registry=registry,
            ),
            alerts=Gauge(
                "linepulse_alerts",
                "Alerts by state (set by the service)",
                ("state",),
                registry=registry,
            ),
            active=Gauge(
                "linepulse_alerts_active",
                "1 on the instance that evaluates and pages: a replicated service has one",
                registry=registry,
            ),
            spc_mean=Gauge(
                "linepulse_spc_mean",
                "The newest subgroup's mean of a control chart followed live",
                ("chart",),
                registry=registry,
            ),
            spc_limit=Gauge(
                "linepulse_spc_limit",
                "A control chart's centre line and control limits",
                ("chart", "limit"),
                registry=registry,
            ),
            spc_subgroups=Counter(
                "linepulse_spc_subgroups",
                "Subgroups a control chart followed live has charted",
                ("chart",),
                registry=registry,
            ),
            spc_broken=Counter(
                "linepulse_spc_broken",
                "Subgroups of a control chart that broke a rule, by rule",
                ("chart", "rule"),
                registry=registry,
            ),
        )
