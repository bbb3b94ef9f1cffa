"""The alert engine: observations in, alert lifecycles and notifications out.

Each `evaluate(now_ms)` reads every rule over every target in its scope and moves the
target's alert through pending -> firing (-> acknowledged) -> resolved; `routing.Router`
turns the states into notifications. The engine never reads a clock: every method takes
`now_ms` (epoch ms, UTC), so a recorded sequence replays the same way, and its state is
saved to the `AlertStore` after every change, so a restart neither re-pages nor forgets.

Lifecycle, per rule and target (fingerprint = rule + labels):

- the condition holds -> `pending`; false (or suppressed) while pending -> dropped,
  nobody hears of it; pending for the rule's `for` -> `firing`;
- firing and the value back on the good side of `clear` for `keep_firing_for`
  -> `resolved`; an unknown value (no record, a null ratio) changes nothing;
- a KPI record whose `coverage` is below the rule's `min_coverage` (default 0.8) counts
  as an unknown value for KPI and forecast rules: it neither starts, promotes, cancels
  nor resolves anything (the figures of a window mostly without data are not evidence
  either way; `no_data` rules page on the lost data itself);
- so does a KPI record of a window that ended more than `rules.PAST_AFTER_MS` ago (a
  backlog being worked off, a late restatement): past windows never page as if fresh;
- KPI rules are suppressed while the machine is in `planned_stop` or its line is outside
  its shifts or in a break: no new pending, no firing, no re-page of a firing one;
- forecast rules (`forecast: target_miss`) make one alert per line and shift (labels
  `shift`, `shift_start`); it resolves at once when its shift is over. They are
  suppressed only while every machine of the line is in `planned_stop`, not in breaks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from linepulse.alerting import Rule
from linepulse.config import PlantConfig
from linepulse.spc_stream import Point, SpcStream, follow
from services.alerts.model import Alert, AlertState, Matcher, Notification, Silence, fingerprint
from services.alerts.routing import Duty, Group, Router, alert_id, silenced
from services.alerts.rules import (
    ChartNews,
    Observations,
    Reading,
    Target,
    forecast_labels,
    read,
    render,
    targets,
)
from services.alerts.store import (
    AlertStore,
    Table,
    alert_from_dict,
    notification_as_dict,
    silence_as_dict,
    silence_from_dict,
)

KEEP_MS = 24 * 3600 * 1000  # resolved alerts, expired silences, emitted notifications
SampleRow = tuple[int, str, str, float | None, str | None]


@dataclass
class _Track:
    """An alert and the engine's bookkeeping for it."""

    alert: Alert
    group: str | None = None
    clear_since: int | None = None  # since when the value has been on the good side

    def as_dict(self) -> dict[str, Any]:
        return {"alert": self.alert.as_dict(), "group": self.group, "clear_since": self.clear_since}


class AlertEngine:
    """Rules, lifecycles, silences and routing over one plant; state in `store`."""

    def __init__(self, plant: PlantConfig, store: AlertStore) -> None:
        self.plant = plant
        self.store = store
        self.settings = plant.alerts
        self._rules = {rule.name: rule for rule in self.settings.rules}
        self._targets = {rule.name: targets(rule, plant) for rule in self.settings.rules}
        self._machines = plant.machines()
        self.duty = Duty(plant)
        self.router = Router(plant, self.duty)
        self._windows = frozenset(
            r.window for r in self.settings.rules if r.kpi is not None or r.forecast is not None
        )
        self.obs = Observations(self._windows)
        # Charts followed live, for the spc rules (linepulse/spc_stream.py).
        live = {rule.spc for rule in self.settings.rules if rule.spc is not None}
        lateness_ms = round(plant.kpi.lateness_s * 1000)
        self.charts = {
            chart.name: SpcStream(chart, lateness_ms) for chart in plant.spc if chart.name in live
        }
        self._spc_seen: set[str] = set()  # charts with points since the last evaluate
        self._tracks: dict[str, _Track] = {}  # alert id -> track, open and resolved
        self._open: dict[str, str] = {}  # fingerprint -> alert id of its open alert
        self._groups: dict[str, Group] = {}
        self._silences: dict[str, Silence] = {}
        self._started: int | None = None  # first evaluate: the no_data baseline
        self._saved: dict[tuple[Table, str], str] = {}  # what the store holds, as JSON
        self._load()

    # -- observations -------------------------------------------------------------------

    def observe_record(self, record: dict[str, Any], now_ms: int) -> None:
        """Keep `record` if it is the latest of the current window of its scope."""
        self.obs.add_record(record)

    def observe_samples(self, rows: Iterable[SampleRow], now_ms: int) -> None:
        """Telemetry rows (ts ms, machine, signal, value_num, value_str): the latest value
        per (machine, signal), and when each machine was last heard (capped at now)."""
        for ts, machine, signal, num, text in rows:
            if machine not in self._machines:
                continue
            if signal == "state" and text is not None:
                mapping = self.plant.state_map_for(self._machines[machine][1])
                text = mapping.get(text, text)
            self.obs.add_sample(ts, machine, signal, num, text, now_ms)

    def observe_spc(self, events: pl.DataFrame) -> dict[str, list[Point]]:
        """Telemetry (`EVENT_SCHEMA`, in arrival order) for the live charts: the rules
        broken by the subgroups it completes, kept until the next evaluation reads them
        (several subgroups between two evaluations: the rules any of them broke). Returns
        the new points by chart."""
        formed = follow(self.charts, events)
        for name, points in formed.items():
            news = ChartNews(
                max(point.end for point in points),
                tuple((point.end, rule) for point in points for rule in point.broken),
            )
            before = self.obs.spc.get(name)
            if name in self._spc_seen and before is not None:
                news = ChartNews(max(before.newest, news.newest), before.broken + news.broken)
            self.obs.spc[name] = news
            self._spc_seen.add(name)
        return formed

    # -- evaluation ---------------------------------------------------------------------

    def evaluate(self, now_ms: int) -> list[Notification]:
        """Advance every alert to `now_ms` and return the notifications now due."""
        if self._started is None:
            self._started = now_ms
        quiet: set[str] = set()  # fingerprints suppressed now
        for rule in self.settings.rules:
            for target in self._targets[rule.name]:
                if rule.no_data is not None and target.machine is not None:
                    # A machine never heard from is silent since the engine first ran.
                    if target.machine not in self.obs.heard:
                        self.obs.heard[target.machine] = self._started
                        self.obs.dirty.add(f"h|{target.machine}")
                labels = self._labels(rule, target)
                fp = fingerprint(rule.name, labels)
                if rule.forecast is not None:
                    suppressed = self._all_planned_stop(target.line)
                else:
                    suppressed = rule.kpi is not None and self._suppressed(target, now_ms)
                if suppressed:
                    quiet.add(fp)
                reading = read(rule, self.obs, target, now_ms)
                self._advance(rule, target, labels, fp, reading, suppressed, now_ms)
                if rule.forecast is not None and (target.line, None, "shift") in self.obs.records:
                    self._end_earlier_shifts(rule, target, fp, now_ms)
        self._spc_seen.clear()
        notes = self._route(quiet, now_ms)
        self._prune(now_ms)
        self._save(now_ms, notes)
        return notes

    def _advance(
        self,
        rule: Rule,
        target: Target,
        labels: dict[str, str],
        fp: str,
        reading: Reading,
        suppressed: bool,
        now: int,
    ) -> None:
        aid = self._open.get(fp)
        if reading.over:
            if aid is not None:
                self._end(fp, now)
            return
        if aid is None:
            if suppressed or reading.breach is not True:
                return
            alert = Alert(
                fingerprint=fp,
                rule=rule.name,
                labels=labels,
                state=AlertState.PENDING,
                severity=rule.severity,
                summary="",
                runbook=None,
                value=reading.value,
                pending_since=now,
                updated_at=now,
            )
            aid = alert_id(alert)
            self._tracks[aid] = _Track(alert)
            self._open[fp] = aid
            self._describe(rule, target, alert, reading)
        track = self._tracks[aid]
        alert = track.alert
        if alert.state is AlertState.PENDING:
            if suppressed or reading.breach is False:
                del self._tracks[aid], self._open[fp]  # never paged: forget it
                return
            if reading.breach is None:
                return
            alert.value = reading.value
            self._describe(rule, target, alert, reading)
            if now - alert.pending_since >= round(rule.for_ * 1000):
                alert.state = AlertState.FIRING
                alert.fired_at = alert.updated_at = now
                track.group = self._join(rule, target, aid, now)
            return
        if reading.recovered is None:
            return
        if not reading.recovered:
            track.clear_since = None
            if reading.breach:
                alert.value = reading.value
                self._describe(rule, target, alert, reading)
            return
        if track.clear_since is None:
            track.clear_since = now
        if now - track.clear_since >= round(rule.keep_firing_for * 1000):
            alert.state = AlertState.RESOLVED
            alert.resolved_at = alert.updated_at = now
            del self._open[fp]

    def _end(self, fp: str, now: int) -> None:
        """What the open alert `fp` watched is gone: drop it if pending, else resolve it
        now (no `keep_firing_for`: there is nothing left to recover)."""
        aid = self._open.pop(fp)
        alert = self._tracks[aid].alert
        if alert.state is AlertState.PENDING:
            del self._tracks[aid]
            return
        alert.state = AlertState.RESOLVED
        alert.resolved_at = alert.updated_at = now

    def _end_earlier_shifts(self, rule: Rule, target: Target, current: str, now: int) -> None:
        """A forecast alert of an earlier shift of this line ends once a later shift's
        record has replaced its own (its final record may never be seen)."""
        for fp, aid in list(self._open.items()):
            alert = self._tracks[aid].alert
            if fp != current and alert.rule == rule.name and alert.line == target.line:
                self._end(fp, now)

    def _join(self, rule: Rule, target: Target, aid: str, now: int) -> str:
        """Put a newly firing alert in the group of its rule and line still waiting to
        page (within `group_wait`), or open a new group."""
        wait_ms = round(self.settings.group_wait * 1000)
        for group in self._ordered_groups():
            if group.accepts(rule.name, target.line, now, wait_ms):
                group.members.append(aid)
                return group.id
        group = Group(
            id=f"{rule.name}|{target.line}|{now}", rule=rule.name, line=target.line, opened_at=now
        )
        group.members.append(aid)
        self._groups[group.id] = group
        return group.id

    def _route(self, quiet: set[str], now: int) -> list[Notification]:
        active = [s for s in self._silences.values() if s.starts_at <= now < s.ends_at]

        def hushed(alert: Alert) -> bool:
            return alert.fingerprint in quiet or silenced(active, alert.labels, now)

        notes: list[Notification] = []
        for group in self._ordered_groups():
            members = [self._tracks[m].alert for m in group.members if m in self._tracks]
            rule = self._rules.get(group.rule)
            if rule is not None:
                notes += self.router.step(group, rule, members, hushed, now)
            done = all(m.state is AlertState.RESOLVED for m in members)
            if done and set(group.fired) <= set(group.resolved):
                del self._groups[group.id]
        return notes

    def _ordered_groups(self) -> list[Group]:
        # In incident order, not dict order: a restarted engine loads groups in another
        # order and must emit the same notifications in the same order.
        return sorted(self._groups.values(), key=lambda g: (g.opened_at, g.id))

    def _suppressed(self, target: Target, now: int) -> bool:
        """KPI rules rest while a machine is in a planned stop (a line: all its machines)
        and outside the line's shifts or in a break: nobody is woken for planned time."""
        if not self.duty.planned(target.line, now):
            return True
        if target.machine is not None:
            return self.obs.state(target.machine) == "planned_stop"
        return self._all_planned_stop(target.line)

    def _all_planned_stop(self, line_id: str) -> bool:
        line = next(li for li in self.plant.lines if li.id == line_id)
        return all(self.obs.state(m.id) == "planned_stop" for m in line.machines)

    def _labels(self, rule: Rule, target: Target) -> dict[str, str]:
        labels = {
            "alertname": rule.name,
            "severity": rule.severity,
            "site": self.plant.site,
            "line": target.line,
        }
        if target.machine is not None:
            labels["machine"] = target.machine
        if rule.forecast is not None:
            labels.update(forecast_labels(self.obs.records.get((target.line, None, "shift"))))
        return {**labels, **rule.labels}

    def _describe(self, rule: Rule, target: Target, alert: Alert, reading: Reading) -> None:
        """Render the rule's summary and runbook texts with the alert's current value."""
        fields = {
            "rule": rule.name,
            "machine": target.machine or target.line,
            "line": target.line,
            "site": self.plant.site,
            "value": alert.value,
            "threshold": rule.threshold if rule.threshold is not None else rule.value,
            "window": rule.window if rule.kpi is not None or rule.forecast is not None else "",
            "severity": rule.severity,
            **reading.fields,
        }
        alert.summary = render(rule.summary, fields)
        alert.runbook = None if rule.runbook is None else render(rule.runbook, fields)

    # -- acks and silences --------------------------------------------------------------

    def ack(self, fingerprint: str, who: str, comment: str | None, now_ms: int) -> Alert:
        """Acknowledge the open alert `fingerprint`: escalation and repeats stop, and the
        next `evaluate` tells everyone already paged. KeyError if no such alert;
        ValueError if it is resolved, or still pending (nobody was paged yet). Acking an
        acknowledged alert keeps the first ack."""
        aid = self._open.get(fingerprint)
        if aid is None:
            if any(t.alert.fingerprint == fingerprint for t in self._tracks.values()):
                raise ValueError(f"alert {fingerprint} is resolved")
            raise KeyError(fingerprint)
        alert = self._tracks[aid].alert
        if alert.state is AlertState.PENDING:
            raise ValueError(f"alert {fingerprint} is pending, not firing")
        if alert.state is AlertState.FIRING:
            alert.state = AlertState.ACKNOWLEDGED
            alert.acked_by, alert.acked_at, alert.ack_comment = who, now_ms, comment
            alert.updated_at = now_ms
            self._save(now_ms, [])
        return alert

    def add_silence(
        self,
        matchers: Sequence[Matcher],
        starts_at: int,
        ends_at: int,
        created_by: str,
        comment: str,
        now_ms: int,
    ) -> Silence:
        """A maintenance window: alerts whose labels match every matcher change state as
        usual between `starts_at` and `ends_at` but page nobody."""
        if not matchers:
            raise ValueError("a silence needs at least one matcher")
        if ends_at <= starts_at:
            raise ValueError("a silence must end after it starts")
        silence = Silence(
            uuid.uuid4().hex, tuple(matchers), starts_at, ends_at, created_by, comment
        )
        self._silences[silence.id] = silence
        self._save(now_ms, [])
        return silence

    def delete_silence(self, silence_id: str) -> bool:
        if self._silences.pop(silence_id, None) is None:
            return False
        self.store.commit({}, {"silences": [silence_id]})
        self._saved.pop(("silences", silence_id), None)
        return True

    def silences(self, now_ms: int) -> list[Silence]:
        """Silences active at `now_ms` or still to come, by start."""
        live = [s for s in self._silences.values() if s.ends_at > now_ms]
        return sorted(live, key=lambda s: (s.starts_at, s.id))

    def alerts(
        self, state: str | None = None, line: str | None = None, severity: str | None = None
    ) -> list[Alert]:
        """Open alerts and those resolved in the last 24 h, oldest first."""
        out = [
            t.alert
            for t in self._tracks.values()
            if (state is None or t.alert.state.value == state)
            and (line is None or t.alert.line == line)
            and (severity is None or t.alert.severity == severity)
        ]
        return sorted(out, key=lambda a: (a.pending_since, a.fingerprint))

    # -- persistence --------------------------------------------------------------------

    def _prune(self, now: int) -> None:
        for aid, track in list(self._tracks.items()):
            resolved = track.alert.resolved_at
            grouped = track.group is not None and track.group in self._groups
            if resolved is not None and now - resolved > KEEP_MS and not grouped:
                del self._tracks[aid]
        for sid, silence in list(self._silences.items()):
            if now - silence.ends_at > KEEP_MS:
                del self._silences[sid]

    def _save(self, now: int, notes: list[Notification]) -> None:
        """Write what changed since the last save, in one transaction."""
        current: dict[tuple[Table, str], tuple[int, dict[str, Any]]] = {}
        for aid, track in self._tracks.items():
            current[("alerts", aid)] = (track.alert.updated_at, track.as_dict())
        for gid, group in self._groups.items():
            current[("groups", gid)] = (group.opened_at, group.as_dict())
        for sid, silence in self._silences.items():
            current[("silences", sid)] = (silence.ends_at, silence_as_dict(silence))
        if self._started is not None:
            current[("meta", "started")] = (self._started, {"at": self._started})
        puts: dict[Table, dict[str, tuple[int, dict[str, Any]]]] = {}
        texts: dict[tuple[Table, str], str] = {}
        for (table, key), (at, doc) in current.items():
            text = json.dumps(doc, sort_keys=True)
            texts[(table, key)] = text
            if self._saved.get((table, key)) != text:
                puts.setdefault(table, {})[key] = (at, doc)
        deletes: dict[Table, list[str]] = {}
        for table, key in self._saved.keys() - current.keys():
            deletes.setdefault(table, []).append(key)
        observations = {k: (now, d) for k, d in self.obs.take_dirty().items()}
        if observations:
            puts["observations"] = observations
        if notes:
            puts["notifications"] = {n.key: (n.created_at, notification_as_dict(n)) for n in notes}
        self.store.commit(puts, deletes, {"notifications": now - KEEP_MS})
        self._saved = texts

    def reload(self) -> None:
        """Forget the state held in memory and read it again from the store: a standby
        showing what the active instance replicated, or taking over from it."""
        self.obs = Observations(self._windows)
        self._tracks, self._open, self._groups, self._silences = {}, {}, {}, {}
        self._started = None
        self._load()

    def _load(self) -> None:
        for aid, doc in self.store.load("alerts").items():
            track = _Track(alert_from_dict(doc["alert"]), doc["group"], doc["clear_since"])
            self._tracks[aid] = track
            if track.alert.state is not AlertState.RESOLVED:
                self._open[track.alert.fingerprint] = aid
        self._groups = {k: Group.from_dict(d) for k, d in self.store.load("groups").items()}
        self._silences = {k: silence_from_dict(d) for k, d in self.store.load("silences").items()}
        meta = self.store.load("meta")
        if "started" in meta:
            self._started = int(meta["started"]["at"])
        self.obs.restore(self.store.load("observations"))
        docs: dict[tuple[Table, str], dict[str, Any]] = {}
        docs.update({("alerts", k): t.as_dict() for k, t in self._tracks.items()})
        docs.update({("groups", k): g.as_dict() for k, g in self._groups.items()})
        docs.update({("silences", k): silence_as_dict(s) for k, s in self._silences.items()})
        self._saved = {key: json.dumps(doc, sort_keys=True) for key, doc in docs.items()}
        if self._started is not None:
            self._saved[("meta", "started")] = json.dumps({"at": self._started}, sort_keys=True)
