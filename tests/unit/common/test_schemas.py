"""The JSON Schema contracts in schemas/ against the Python models that implement them.

Every valid sample must pass both the schema and the model; every invalid one must be
refused by both. Where one side is deliberately stricter, a test says so by name.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from linepulse.alerting import AlertSettings, Channel, KpiField, Person, Rule, Scope, ShiftReports
from linepulse.config import (
    Break,
    ConfigError,
    KpiSettings,
    Line,
    Machine,
    PlantConfig,
    Product,
    Shift,
    parse_config,
)
from linepulse.costs import Budget, LineCosts, MachineCosts, PartCosts, PlantCosts
from linepulse.events import _ALLOWED, _REQUIRED, EventError, decode_event
from linepulse.production import LineTarget, ReasonCategory
from linepulse.records import KpiRecord
from linepulse.sources import IngestSettings, MqttSource, OpcuaSource, Sources
from linepulse.spc import SpcChart

ROOT = Path(__file__).parents[3]
SCHEMAS = ROOT / "schemas"
EXAMPLE = ROOT / "examples" / "classic-oee"

TELEMETRY = "telemetry-event"
KPI_RECORD = "kpi-record"
PLANT_CONFIG = "plant-config"
ALL_SCHEMAS = (TELEMETRY, KPI_RECORD, PLANT_CONFIG)


@cache
def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text("utf-8"))
    return schema


@cache
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        load_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def schema_errors(name: str, instance: object) -> list[str]:
    return [error.message for error in validator(name).iter_errors(instance)]


# -- the schema files themselves --------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://linepulse.dev/schemas/{name}.schema.json"
    assert schema["title"]
    assert schema["description"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("name", ALL_SCHEMAS)
def test_every_property_is_described(name: str) -> None:
    undescribed = [
        key for key, sub in load_schema(name)["properties"].items() if "description" not in sub
    ]
    assert undescribed == []


# -- telemetry event ----------------------------------------------------------------------


def event_lines() -> list[str]:
    lines = (EXAMPLE / "events.jsonl").read_text("utf-8").splitlines()
    return [line for line in lines if line.strip()]


def test_telemetry_schema_lists_the_decoder_fields() -> None:
    schema = load_schema(TELEMETRY)
    assert set(schema["properties"]) == set(_ALLOWED)
    assert schema["required"] == list(_REQUIRED)


def test_example_events_pass_schema_and_decoder() -> None:
    lines = event_lines()
    assert len(lines) > 1000
    for number, line in enumerate(lines, start=1):
        event = orjson.loads(line)
        assert schema_errors(TELEMETRY, event) == [], f"events.jsonl line {number}"
        decode_event(event)


VALID_EVENTS: dict[str, dict[str, Any]] = {
    "epoch ms": {"ts": 1793599200000, "machine": "m1", "signal": "total_count", "value": 7},
    "fractional epoch ms": {"ts": 1793599200000.4, "machine": "m1", "signal": "x", "value": 1.5},
    "epoch zero": {"ts": 0, "machine": "m1", "signal": "x", "value": 1},
    "epoch max": {"ts": 253402300799999, "machine": "m1", "signal": "x", "value": 1},
    "offset": {
        "ts": "2026-11-02T07:00:00+01:00",
        "machine": "m1",
        "signal": "state",
        "value": "down",
    },
    "fraction": {"ts": "2026-11-02T06:00:00.250Z", "machine": "m1", "signal": "x", "value": 2},
    "bool value": {"ts": "2026-11-02T06:00:00Z", "machine": "m1", "signal": "door", "value": True},
    "empty string value": {"ts": 0, "machine": "m1", "signal": "product", "value": ""},
    "every field": {
        "ts": "2026-11-02T06:00:00-05:00",
        "machine": "m" * 256,
        "signal": "state",
        "value": "down",
        "reason": "jam",
        "quality": "uncertain",
        "line": "line-1",
        "site": "plant-a",
        "source": "opcua://plc-1/ns=2;s=State",
        "seq": 42,
    },
    "reason null": {"ts": 0, "machine": "m1", "signal": "state", "value": "idle", "reason": None},
}


@pytest.mark.parametrize("event", VALID_EVENTS.values(), ids=VALID_EVENTS.keys())
def test_valid_event_passes_schema_and_decoder(event: dict[str, Any]) -> None:
    assert schema_errors(TELEMETRY, event) == []
    decode_event(event)


def test_schema_examples_pass_the_decoder() -> None:
    for event in load_schema(TELEMETRY)["examples"]:
        assert schema_errors(TELEMETRY, event) == []
        decode_event(event)


GOOD_EVENT: dict[str, Any] = {
    "ts": "2026-11-02T06:00:00Z",
    "machine": "filler-1",
    "signal": "state",
    "value": "running",
}


def event_with(**changes: Any) -> dict[str, Any]:
    """GOOD_EVENT with fields replaced; a value of `...` removes the field."""
    event = {**GOOD_EVENT, **changes}
    return {key: value for key, value in event.items() if value is not ...}


INVALID_EVENTS: dict[str, dict[str, Any]] = {
    "missing ts": event_with(ts=...),
    "missing machine": event_with(machine=...),
    "missing value": event_with(value=...),
    "unknown field": event_with(colour="red"),
    "value null": event_with(value=None),
    "value object": event_with(value={"a": 1}),
    "value list": event_with(value=[1, 2]),
    "value too long": event_with(value="x" * 257),
    "quality meh": event_with(quality="meh"),
    "quality null": event_with(quality=None),
    "empty machine": event_with(machine=""),
    "machine too long": event_with(machine="m" * 257),
    "machine a number": event_with(machine=7),
    "empty signal": event_with(signal=""),
    "empty reason": event_with(reason=""),
    "ts boolean": event_with(ts=True),
    "ts null": event_with(ts=None),
    "ts naive string": event_with(ts="2026-11-02T06:00:00"),
    "ts date only": event_with(ts="2026-11-02"),
    "ts garbage": event_with(ts="yesterday"),
    "ts lowercase t and z": event_with(ts="2026-11-02t06:00:00z"),
    "ts hour 24": event_with(ts="2026-11-02T24:00:00Z"),
    "ts leap second": event_with(ts="2026-12-31T23:59:60Z"),
    "ts before 1970": event_with(ts="1969-12-31T23:59:59Z"),
    "ts negative": event_with(ts=-1),
    "ts in microseconds": event_with(ts=1793599200000000),
}


@pytest.mark.parametrize("event", INVALID_EVENTS.values(), ids=INVALID_EVENTS.keys())
def test_invalid_event_is_rejected_by_schema_and_decoder(event: dict[str, Any]) -> None:
    assert schema_errors(TELEMETRY, event) != []
    with pytest.raises(EventError):
        decode_event(event)


def test_event_must_be_an_object() -> None:
    for not_an_object in ([GOOD_EVENT], "event", 1, None):
        assert schema_errors(TELEMETRY, not_an_object) != []
        with pytest.raises(EventError):
            decode_event(not_an_object)


# The decoder ignores the pass-through fields; the schema still states their types.
SCHEMA_ONLY_INVALID_EVENTS: dict[str, dict[str, Any]] = {
    "seq a string": event_with(seq="7"),
    "line a number": event_with(line=1),
    "site null": event_with(site=None),
}


@pytest.mark.parametrize(
    "event", SCHEMA_ONLY_INVALID_EVENTS.values(), ids=SCHEMA_ONLY_INVALID_EVENTS.keys()
)
def test_schema_types_the_pass_through_fields(event: dict[str, Any]) -> None:
    assert schema_errors(TELEMETRY, event) != []


# -- plant config -------------------------------------------------------------------------


def test_plant_schema_lists_the_model_fields() -> None:
    schema = load_schema(PLANT_CONFIG)
    defs = schema["$defs"]
    assert set(schema["properties"]) == set(PlantConfig.model_fields)
    models: dict[str, type[Any]] = {
        "line": Line,
        "machine": Machine,
        "shift": Shift,
        "break": Break,
        "product": Product,
        "kpi": KpiSettings,
        "sources": Sources,
        "ingest": IngestSettings,
        "OpcuaSource": OpcuaSource,
        "MqttSource": MqttSource,
        "reasonCategory": ReasonCategory,
        "lineTarget": LineTarget,
        "alerts": AlertSettings,
        "Rule": Rule,
        "Scope": Scope,
        "Channel": Channel,
        "Person": Person,
        "partCosts": PartCosts,
        "machineCosts": MachineCosts,
        "lineCosts": LineCosts,
        "plantCosts": PlantCosts,
        "budget": Budget,
        "shiftReports": ShiftReports,
        "spcChart": SpcChart,
    }
    for name, model in models.items():
        # What the config file says: a field's alias where it has one (`for`).
        keys = {key: field.alias or key for key, field in model.model_fields.items()}
        assert set(defs[name]["properties"]) == set(keys.values()), name
        required = {keys[key] for key, field in model.model_fields.items() if field.is_required()}
        assert set(defs[name].get("required", [])) == required, name
        assert defs[name]["additionalProperties"] is False, name
    required = {key for key, field in PlantConfig.model_fields.items() if field.is_required()}
    assert set(schema["required"]) == required


def test_plant_schema_defaults_match_the_model() -> None:
    schema = load_schema(PLANT_CONFIG)
    kpi = schema["$defs"]["kpi"]["properties"]
    defaults = KpiSettings()
    assert kpi["lateness_s"]["default"] == defaults.lateness_s
    assert kpi["restate_horizon_s"]["default"] == defaults.restate_horizon_s
    assert kpi["small_stop_s"]["default"] == defaults.small_stop_s
    assert kpi["startup_s"]["default"] == defaults.startup_s
    rule = schema["$defs"]["Rule"]["properties"]
    assert rule["margin"]["default"] == Rule.model_fields["margin"].default
    assert rule["min_coverage"]["default"] == Rule.model_fields["min_coverage"].default
    assert rule["summary"]["default"] == Rule.model_fields["summary"].default
    forecast = Rule.model_validate({"name": "r", "forecast": "target_miss"})
    assert json.dumps(forecast.summary) in rule["summary"]["description"]
    assert rule["kpi"]["anyOf"][0]["enum"] == list(get_args(KpiField))
    assert tuple(kpi["windows"]["default"]) == defaults.windows
    assert tuple(schema["$defs"]["shift"]["properties"]["days"]["default"]) == (
        Shift.model_fields["days"].default
    )
    assert (
        schema["properties"]["timezone"]["default"] == PlantConfig.model_fields["timezone"].default
    )
    assert schema["properties"]["day_start"]["default"] == "00:00"
    assert PlantConfig.model_fields["day_start"].default.strftime("%H:%M") == "00:00"


def load_yaml(text: str) -> dict[str, Any]:
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def classic_config() -> dict[str, Any]:
    return load_yaml((EXAMPLE / "plant.yaml").read_text("utf-8"))


RICH_CONFIG = """
site: plant-b
timezone: Europe/Berlin
day_start: "06:00"
shifts:
  - name: early
    start: "06:00"
    end: "14:00"
    days: [mon, tue, wed, thu, fri]
    breaks:
      - {start: "09:00", end: "09:15"}
  - name: late
    start: "14:00"
    end: "22:00"
    days: [mon, tue, wed, thu, fri]
days_off: ["2026-12-24", "2026-12-25"]
state_map:
  "6": running
  "5": idle
  "11": down
  Held: down
  Suspended: idle
reasons:
  - {name: mechanical, codes: [jam, motor/overload]}
  - {name: planned maintenance, planned: true, codes: [PM-1, "clean in place"]}
lines:
  - id: line-1
    constraint: filler-1
    output: capper-1
    target: {efficiency: 0.85}
    machines:
      - id: filler-1
        ideal_cycle_time_s: 1.0
        products:
          sku-a: 0.8
          sku-b: {ideal_cycle_time_s: 1.2}
        counter_max: 2147483647
        small_stop_s: 120
        startup_s: null
        reasons:
          - {name: filler, codes: [jam, starved]}
      - id: capper-1
        ideal_cycle_time_s: 0.9
        state_map:
          "17": changeover
          "4": planned_stop
        counter_max: {total_count: 65535, reject_count: 65535}
        startup_s: 600
  - id: line-2
    shifts:
      - name: day
        start: "06:00"
        end: "18:00"
        breaks:
          - {start: "12:00", end: "12:30"}
      - name: night
        start: "18:00"
        end: "06:00"
        days: [mon, tue, wed, thu, fri, sat, sun]
        breaks:
          - {start: "23:30", end: "00:15"}
          - {start: "05:30", end: "06:00"}
    days_off: []
    machines:
      - id: press.2_a
        products: {p-100: 2.5}
      - id: press.2_b
        ideal_cycle_time_s: null
    target: {parts: {day: 9000, night: 8000}}
    output: press.2_a
kpi:
  lateness_s: 5
  restate_horizon_s: 7200
  small_stop_s: 60
  startup_s: 300
  windows: [1m, 1h, shift, day]
alerts:
  channels: [{id: log, type: console}]
  group_wait: 5s
  repeat_interval: 4h
  rules:
    - {name: behind-plan, forecast: target_miss, margin: 0.05, for: 15m, severity: critical}
    - name: line-1-behind
      forecast: target_miss
      margin: 0
      scope: {lines: [line-1]}
      summary: "{line} is {shortfall} parts behind ({projected} of {target})"
    - {name: slow-nee, kpi: nee, window: 1h, op: "<", threshold: 0.5, clear: 0.55, for: 10m}
    - {name: silent, no_data: 90s, keep_firing_for: 500ms, escalate_after: 1d}
"""


def test_classic_config_passes_schema_and_model() -> None:
    data = classic_config()
    assert schema_errors(PLANT_CONFIG, data) == []
    config = parse_config(data, "plant.yaml")
    assert config.lines[0].machines[0].ideal_cycle_time_s == 1.0


def test_rich_config_passes_schema_and_model() -> None:
    data = load_yaml(RICH_CONFIG)
    assert schema_errors(PLANT_CONFIG, data) == []
    config = parse_config(data, "rich.yaml")
    filler, capper = config.lines[0].machines
    assert filler.products["sku-a"].ideal_cycle_time_s == 0.8
    assert filler.counter_max == dict.fromkeys(
        ("total_count", "good_count", "reject_count", "rework_count"), 2147483647
    )
    assert config.state_map_for(capper)["17"] == "changeover"
    assert config.state_map_for(capper)["6"] == "running"
    night = config.shifts_for(config.lines[1])[1]
    assert night.length_min == 12 * 60
    assert config.kpi.windows == ("1m", "1h", "shift", "day")
    line1, line2 = config.lines
    assert (line1.constraint_machine.id, line1.output_machine.id) == ("filler-1", "capper-1")
    assert line1.target == LineTarget(efficiency=0.85)
    assert line2.target == LineTarget(parts={"day": 9000, "night": 8000})
    assert config.planned_reasons(capper) == {"PM-1", "clean in place"}
    assert config.planned_reasons(filler) == set()  # its own tree has no planned reason
    assert (config.small_stop_ms(filler), config.small_stop_ms(capper)) == (120_000, 60_000)
    assert (config.startup_ms(filler), config.startup_ms(capper)) == (300_000, 600_000)
    behind, line1_behind, nee, silent = config.alerts.rules
    assert (behind.forecast, behind.margin, behind.for_) == ("target_miss", 0.05, 900.0)
    assert (line1_behind.margin, nee.kpi, silent.keep_firing_for) == (0.0, "nee", 0.5)


def test_yaml_1_1_forms_are_accepted_by_the_model_only() -> None:
    # Unquoted 06:00 is the integer 360, unquoted 2026-12-25 a date, 6: an integer key.
    # The loader accepts them for convenience; the schema documents the string forms.
    data = load_yaml(
        """
site: plant-c
day_start: 06:00
days_off: [2026-12-25]
state_map: {6: running}
lines: [{id: l1, machines: [{id: m1}]}]
"""
    )
    config = parse_config(data)
    assert config.day_start.hour == 6
    assert config.state_map == {"6": "running"}
    assert schema_errors(PLANT_CONFIG, data) != []


def config_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(classic_config())
    change(data)
    return data


def machine0(data: dict[str, Any]) -> dict[str, Any]:
    machine: dict[str, Any] = data["lines"][0]["machines"][0]
    return machine


# (config, the key path the loader's message must name)
INVALID_CONFIGS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown top-level key": (config_with(lambda d: d.update(colour="red")), "colour"),
    "unknown machine key": (
        config_with(lambda d: machine0(d).update(speed=3)),
        "lines[0].machines[0].speed",
    ),
    "negative ideal cycle time": (
        config_with(lambda d: machine0(d).update(ideal_cycle_time_s=-1)),
        "lines[0].machines[0].ideal_cycle_time_s",
    ),
    "zero ideal cycle time": (
        config_with(lambda d: machine0(d).update(ideal_cycle_time_s=0)),
        "lines[0].machines[0].ideal_cycle_time_s",
    ),
    "bad HH:MM": (config_with(lambda d: d["shifts"][0].update(start="6am")), "shifts[0].start"),
    "hour 24": (config_with(lambda d: d.update(day_start="24:00")), "day_start"),
    "missing lines": (config_with(lambda d: d.pop("lines")), "lines"),
    "no lines": (config_with(lambda d: d.update(lines=[])), "lines"),
    "no machines": (config_with(lambda d: d["lines"][0].update(machines=[])), "lines[0].machines"),
    "missing site": (config_with(lambda d: d.pop("site")), "site"),
    "state_map value broken": (
        config_with(lambda d: d.update(state_map={"7": "broken"})),
        "state_map.7",
    ),
    "machine state_map value broken": (
        config_with(lambda d: machine0(d).update(state_map={"Held": "broken"})),
        "lines[0].machines[0].state_map.Held",
    ),
    "bad machine id": (
        config_with(lambda d: machine0(d).update(id="filler 1")),
        "lines[0].machines[0].id",
    ),
    "counter_max zero": (
        config_with(lambda d: machine0(d).update(counter_max=0)),
        "lines[0].machines[0].counter_max",
    ),
    "counter_max unknown signal": (
        config_with(lambda d: machine0(d).update(counter_max={"scrap_count": 10})),
        # (sic) how format_validation_error renders the loc of a bad dict key
        "lines[0].machines[0].counter_max.scrap_count",
    ),
    "product cycle time negative": (
        config_with(lambda d: machine0(d).update(products={"sku-a": -0.5})),
        "lines[0].machines[0].products.sku-a.ideal_cycle_time_s",
    ),
    "unknown product key": (
        config_with(lambda d: machine0(d).update(products={"sku-a": {"cycle": 1}})),
        "lines[0].machines[0].products.sku-a.cycle",
    ),
    "bad weekday": (
        config_with(lambda d: d["shifts"][0].update(days=["funday"])),
        "shifts[0].days[0]",
    ),
    "break missing end": (
        config_with(lambda d: d["shifts"][0].update(breaks=[{"start": "08:00"}])),
        "shifts[0].breaks[0].end",
    ),
    "bad day off": (config_with(lambda d: d.update(days_off=["2026-13-01"])), "days_off[0]"),
    "negative lateness": (
        config_with(lambda d: d.update(kpi={"lateness_s": -1})),
        "kpi.lateness_s",
    ),
    "unknown window": (config_with(lambda d: d.update(kpi={"windows": ["2h"]})), "kpi.windows[0]"),
    "negative kpi small_stop_s": (
        config_with(lambda d: d.update(kpi={"small_stop_s": -1})),
        "kpi.small_stop_s",
    ),
    "negative machine startup_s": (
        config_with(lambda d: machine0(d).update(startup_s=-5)),
        "lines[0].machines[0].startup_s",
    ),
    "reason code with a bang": (
        config_with(lambda d: d.update(reasons=[{"name": "m", "codes": ["jam!"]}])),
        "reasons[0].codes",
    ),
    "reason category without codes": (
        config_with(lambda d: machine0(d).update(reasons=[{"name": "m", "codes": []}])),
        "lines[0].machines[0].reasons[0].codes",
    ),
    "reserved reason code": (
        config_with(lambda d: d.update(reasons=[{"name": "m", "codes": ["unassigned"]}])),
        "reasons[0].codes",
    ),
    "target parts and efficiency": (
        config_with(lambda d: d["lines"][0].update(target={"parts": 100, "efficiency": 0.8})),
        "lines[0].target",
    ),
    "target neither": (config_with(lambda d: d["lines"][0].update(target={})), "lines[0].target"),
    "target parts zero": (
        config_with(lambda d: d["lines"][0].update(target={"parts": 0})),
        "lines[0].target.parts",
    ),
    "target shift parts negative": (
        config_with(lambda d: d["lines"][0].update(target={"parts": {"early": -1}})),
        "lines[0].target.parts",
    ),
    "target efficiency 3": (
        config_with(lambda d: d["lines"][0].update(target={"efficiency": 3})),
        "lines[0].target.efficiency",
    ),
    "target unknown key": (
        config_with(lambda d: d["lines"][0].update(target={"parts": 9, "per": "shift"})),
        "lines[0].target.per",
    ),
    "forecast rule margin 1": (
        config_with(
            lambda d: d.update(
                alerts={"rules": [{"name": "f", "forecast": "target_miss", "margin": 1}]}
            )
        ),
        "alerts.rules[0].margin",
    ),
    "forecast kind unknown": (
        config_with(lambda d: d.update(alerts={"rules": [{"name": "f", "forecast": "late"}]})),
        "alerts.rules[0].forecast",
    ),
    "rule duration in minutes spelled out": (
        config_with(lambda d: d.update(alerts={"rules": [{"name": "s", "no_data": "2 min"}]})),
        "alerts.rules[0].no_data",
    ),
}


@pytest.mark.parametrize(("data", "path"), INVALID_CONFIGS.values(), ids=INVALID_CONFIGS.keys())
def test_invalid_config_is_rejected_by_schema_and_model(data: dict[str, Any], path: str) -> None:
    assert schema_errors(PLANT_CONFIG, data) != []
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "plant.yaml")
    assert f"\n{path}: " in str(caught.value)


def test_unknown_timezone_is_rejected_by_the_model_only() -> None:
    # JSON Schema cannot consult the timezone database; the loader does.
    data = config_with(lambda d: d.update(timezone="Mars/Olympus_Mons"))
    assert schema_errors(PLANT_CONFIG, data) == []
    with pytest.raises(ConfigError, match=r"\ntimezone: unknown IANA timezone"):
        parse_config(data, "plant.yaml")


# -- KPI record ---------------------------------------------------------------------------


def full_record() -> dict[str, Any]:
    """The classic worked example as a complete machine record of the `shift` window."""
    expected = json.loads((EXAMPLE / "expected.json").read_text("utf-8"))
    record: dict[str, Any] = {
        "site": "plant-a",
        "line": "line-1",
        "machine": "filler-1",
        "window": "shift",
        "window_start": "2026-11-02T06:00:00Z",
        "window_end": "2026-11-02T14:00:00Z",
        "shift": "early",
        "planned_s": 25200.0,
        "run_s": 22380.0,
        "downtime_s": 2820.0,
        "unknown_s": 0.0,
        "stops": 3,
        "total_count": 19271,
        "good_count": 18848,
        "reject_count": 423,
        "availability": 0.888095238095238,
        "performance": 0.8610813226094728,
        "quality": 0.9780499195682631,
        "oee": 0.7479365079365079,
        "mtbf_s": 7460.0,
        "mttr_s": 940.0,
        "downtime_by_reason": {"jam": 1800.0, "material_shortage": 1020.0},
        "final": True,
        "revision": 0,
        # -- beyond OEE: no product, small stop, changeover, rework counter or start-up
        "product": None,
        "coverage": 1.0,
        "calendar_s": 28800.0,
        "down_s": 2820.0,
        "idle_s": 0.0,
        "setup_s": 0.0,
        "small_stops": 0,
        "small_stop_s": 0.0,
        "failures": 3,
        "rework_count": None,
        "effectiveness": 0.8610813226094728,
        "technical_efficiency": 0.888095238095238,
        "setup_rate": 0.0,
        "nee": 0.7479365079365079,
        "teep": 0.6544444444444445,
        "throughput_per_h": 2753.0,
        "scrap_ratio": 0.021950080431736806,
        "rework_ratio": None,
        "first_pass_yield": None,
        "mttf_s": 7460.0,
        "fully_productive_s": 18848.0,
        "losses": {
            "equipment_failure_s": 2820.0,
            "setup_s": 0.0,
            "small_stops_s": 0.0,
            "slow_cycles_s": 3109.0,
            "startup_rejects_s": 0.0,
            "production_rejects_s": 423.0,
            "no_data_s": 0.0,
        },
        "by_product": {},
        "constraint": None,
        "oee_constraint": None,
        "bottleneck": None,
        "bottleneck_s": None,
        "output_count": None,
        "target_count": None,
        "projected_count": None,
        "loss_cost": None,
    }
    assert expected.items() <= record.items(), "expected.json drifted from this record"
    assert sum(record["losses"].values()) + record["fully_productive_s"] == record["planned_s"]
    return record


def line_record() -> dict[str, Any]:
    """A line record of an idle minute outside any shift: no machine, every ratio null."""
    return {
        "site": "plant-a",
        "line": "line-1",
        "machine": None,
        "window": "1m",
        "window_start": "2026-11-02T05:00:00Z",
        "window_end": "2026-11-02T05:01:00Z",
        "shift": None,
        "planned_s": 0,
        "run_s": 0,
        "downtime_s": 0,
        "unknown_s": 0,
        "stops": 0,
        "total_count": 0,
        "good_count": 0,
        "reject_count": 0,
        "availability": None,
        "performance": None,
        "quality": None,
        "oee": None,
        "mtbf_s": None,
        "mttr_s": None,
        "downtime_by_reason": {},
        "final": False,
        "revision": 0,
        "product": None,
        "coverage": None,  # no planned time
        "calendar_s": 60.0,
        "down_s": 0.0,
        "idle_s": 0.0,
        "setup_s": 0.0,
        "small_stops": 0,
        "small_stop_s": 0.0,
        "failures": 0,
        "rework_count": None,
        "effectiveness": None,
        "technical_efficiency": None,
        "setup_rate": None,
        "nee": None,
        "teep": None,
        "throughput_per_h": None,
        "scrap_ratio": None,
        "rework_ratio": None,
        "first_pass_yield": None,
        "mttf_s": None,
        "fully_productive_s": None,
        "losses": None,
        "by_product": {},
        "constraint": "filler-1",
        "oee_constraint": None,
        "bottleneck": None,
        "bottleneck_s": None,
        "output_count": 0,
        "target_count": None,
        "projected_count": None,
        "loss_cost": None,
    }


def line_shift_record() -> dict[str, Any]:
    """A line's open `shift` record two hours into the shift: two products, small stops,
    a changeover, rework, a bottleneck, and the shift target with its projection."""
    return {
        "site": "plant-a",
        "line": "line-1",
        "machine": None,
        "window": "shift",
        "window_start": "2026-11-02T06:00:00Z",
        "window_end": "2026-11-02T14:00:00Z",
        "shift": "early",
        "planned_s": 7200.0,
        "run_s": 6600.0,
        "downtime_s": 600.0,
        "unknown_s": 0.0,
        "stops": 2,
        "total_count": 6000,
        "good_count": 5900,
        "reject_count": 100,
        "availability": 0.9166666666666666,
        "performance": 0.9090909090909091,
        "quality": 0.9833333333333333,
        "oee": 0.8194444444444444,
        "mtbf_s": 3300.0,
        "mttr_s": 300.0,
        "downtime_by_reason": {"jam": 420.0, "changeover": 180.0},
        "final": False,
        "revision": 0,
        "product": "sku-a",
        "coverage": 1.0,
        "calendar_s": 7200.0,
        "down_s": 420.0,
        "idle_s": 0.0,
        "setup_s": 180.0,
        "small_stops": 4,
        "small_stop_s": 95.0,
        "failures": 1,
        "rework_count": 30,
        "effectiveness": 0.9090909090909091,
        "technical_efficiency": 0.9401709401709402,
        "setup_rate": 0.02654867256637168,
        "nee": 0.8404558404558404,
        "teep": 0.8194444444444444,
        "throughput_per_h": 3000.0,
        "scrap_ratio": 0.016666666666666666,
        "rework_ratio": 0.005,
        "first_pass_yield": 0.9783333333333334,
        "mttf_s": 6600.0,
        "fully_productive_s": 5900.0,
        "losses": {
            "equipment_failure_s": 420.0,
            "setup_s": 180.0,
            "small_stops_s": 95.0,
            "slow_cycles_s": 505.0,
            "startup_rejects_s": 40.0,
            "production_rejects_s": 60.0,
            "no_data_s": 0.0,
        },
        "by_product": {
            "sku-a": {
                "run_s": 4000.0,
                "total_count": 3700,
                "good_count": 3650,
                "reject_count": 50,
                "performance": 0.925,
                "quality": 0.9864864864864865,
            },
            "sku-b": {
                "run_s": 2600.0,
                "total_count": 2300,
                "good_count": 2250,
                "reject_count": 50,
                "performance": None,
                "quality": 0.9782608695652174,
            },
        },
        "constraint": "filler-1",
        "oee_constraint": 0.8,
        "bottleneck": "capper-1",
        "bottleneck_s": 515.0,
        "output_count": 5900,
        "target_count": 20000,
        "projected_count": 20650.0,
        "loss_cost": {
            "currency": "EUR",
            "total": 1234.5,
            "by_category": {
                "equipment_failure": 600.0,
                "setup": 200.0,
                "small_stops": 34.5,
                "slow_cycles": 300.0,
                "startup_rejects": 0.0,
                "production_rejects": 100.0,
            },
            "unpriced_machines": ["labeler-1"],
        },
    }


@pytest.mark.parametrize(
    "record",
    [full_record(), line_record(), line_shift_record()],
    ids=["machine", "line", "line-shift"],
)
def test_record_passes_schema_and_model(record: dict[str, Any]) -> None:
    assert schema_errors(KPI_RECORD, record) == []
    model = KpiRecord.model_validate(record)
    # What the model serialises is itself a valid record, with UTC times ending in Z.
    dumped = model.model_dump(mode="json")
    assert schema_errors(KPI_RECORD, dumped) == []
    assert dumped == record
    assert KpiRecord.model_validate_json(orjson.dumps(record)) == model


def test_negative_good_count_in_a_minute_is_valid() -> None:
    record = line_record() | {"total_count": 0, "reject_count": 2, "good_count": -2}
    assert schema_errors(KPI_RECORD, record) == []
    KpiRecord.model_validate(record)


def record_with(**changes: Any) -> dict[str, Any]:
    """full_record() with fields replaced; a value of `...` removes the field."""
    record = {**full_record(), **changes}
    return {key: value for key, value in record.items() if value is not ...}


def line_shift_with(**changes: Any) -> dict[str, Any]:
    """line_shift_record() with fields replaced; a value of `...` removes the field."""
    record = {**line_shift_record(), **changes}
    return {key: value for key, value in record.items() if value is not ...}


def product_with(**changes: Any) -> dict[str, Any]:
    """by_product of line_shift_record() with sku-a's fields replaced (`...` removes)."""
    run = {**line_shift_record()["by_product"]["sku-a"], **changes}
    return {"sku-a": {key: value for key, value in run.items() if value is not ...}}


INVALID_RECORDS: dict[str, dict[str, Any]] = {
    "missing field": record_with(revision=...),
    "missing nullable field": record_with(machine=...),
    "extra field": record_with(colour="red"),
    "window 2h": record_with(window="2h"),
    "revision -1": record_with(revision=-1),
    "availability high": record_with(availability="high"),
    "negative run_s": record_with(run_s=-1.0),
    "negative stops": record_with(stops=-1),
    "fractional stops": record_with(stops=1.5),
    "final null": record_with(final=None),
    "reason seconds text": record_with(downtime_by_reason={"jam": "long"}),
    "window_start not a time": record_with(window_start="monday"),
    # beyond OEE
    "missing losses": record_with(losses=...),
    "missing projected_count": line_shift_with(projected_count=...),
    "missing by_product": line_shift_with(by_product=...),
    "product a number": line_shift_with(product=7),
    "calendar_s null": record_with(calendar_s=None),
    "negative setup_s": record_with(setup_s=-1.0),
    "small_stops fractional": record_with(small_stops=0.5),
    "negative failures": record_with(failures=-1),
    "teep text": record_with(teep="high"),
    "losses a list": record_with(losses=[1.0, 2.0]),
    "loss in words": record_with(losses={**full_record()["losses"], "setup_s": "none"}),
    "by_product a list": line_shift_with(by_product=[]),
    "product run extra field": line_shift_with(by_product=product_with(colour="red")),
    "product run missing quality": line_shift_with(by_product=product_with(quality=...)),
    "product run negative total": line_shift_with(by_product=product_with(total_count=-1)),
    "target_count fractional": line_shift_with(target_count=1.5),
    "projected_count text": line_shift_with(projected_count="lots"),
    "output_count text": line_shift_with(output_count="none"),
    "constraint a number": line_shift_with(constraint=1),
    "missing loss_cost": line_shift_with(loss_cost=...),
    "loss_cost a number": line_shift_with(loss_cost=1234.5),
    "loss_cost without currency": line_shift_with(
        loss_cost={k: v for k, v in line_shift_record()["loss_cost"].items() if k != "currency"}
    ),
    "loss_cost total text": line_shift_with(
        loss_cost={**line_shift_record()["loss_cost"], "total": "a lot"}
    ),
}


@pytest.mark.parametrize("record", INVALID_RECORDS.values(), ids=INVALID_RECORDS.keys())
def test_invalid_record_is_rejected_by_schema_and_model(record: dict[str, Any]) -> None:
    assert schema_errors(KPI_RECORD, record) != []
    with pytest.raises(ValidationError):
        KpiRecord.model_validate(record)


# Both the schema and KpiRecord refuse these; the core must never emit them.
BOTH_INVALID_RECORDS: dict[str, dict[str, Any]] = {
    "window_start with offset": record_with(window_start="2026-11-02T07:00:00+01:00"),
    "window_end naive": record_with(window_end="2026-11-02T14:00:00"),
    "negative total_count": record_with(total_count=-1),
    "negative reject_count": record_with(reject_count=-1),
    "negative availability": record_with(availability=-0.1),
    "negative reason seconds": record_with(downtime_by_reason={"jam": -1.0}),
}


@pytest.mark.parametrize("record", BOTH_INVALID_RECORDS.values(), ids=BOTH_INVALID_RECORDS.keys())
def test_schema_and_model_refuse_out_of_range_records(record: dict[str, Any]) -> None:
    assert schema_errors(KPI_RECORD, record) != []
    with pytest.raises(ValidationError):
        KpiRecord.model_validate(record)


# The model leaves these to the core; the schema states what a consumer may rely on.
SCHEMA_ONLY_INVALID_RECORDS: dict[str, dict[str, Any]] = {
    "a loss missing": record_with(
        losses={k: v for k, v in full_record()["losses"].items() if k != "setup_s"}
    ),
    "an unknown loss": record_with(losses={**full_record()["losses"], "speed_s": 1.0}),
    "negative scrap_ratio": record_with(scrap_ratio=-0.1),
    "negative mttf_s": record_with(mttf_s=-1.0),
    "negative rework_count": line_shift_with(rework_count=-1),
    "negative target_count": line_shift_with(target_count=-5),
    "negative bottleneck_s": line_shift_with(bottleneck_s=-1.0),
}


@pytest.mark.parametrize(
    "record", SCHEMA_ONLY_INVALID_RECORDS.values(), ids=SCHEMA_ONLY_INVALID_RECORDS.keys()
)
def test_schema_is_stricter_on_loss_keys_and_signs(record: dict[str, Any]) -> None:
    assert schema_errors(KPI_RECORD, record) != []
    KpiRecord.model_validate(record)
