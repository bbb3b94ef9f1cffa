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
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import ValidationError

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
from linepulse.events import _ALLOWED, _REQUIRED, EventError, decode_event
from linepulse.records import RECORD_FIELDS, KpiRecord
from linepulse.sources import IngestSettings, MqttSource, OpcuaSource, Sources

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
    }
    for name, model in models.items():
        assert set(defs[name]["properties"]) == set(model.model_fields), name
        required = {key for key, field in model.model_fields.items() if field.is_required()}
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
lines:
  - id: line-1
    machines:
      - id: filler-1
        ideal_cycle_time_s: 1.0
        products:
          sku-a: 0.8
          sku-b: {ideal_cycle_time_s: 1.2}
        counter_max: 2147483647
      - id: capper-1
        ideal_cycle_time_s: 0.9
        state_map:
          "17": changeover
          "4": planned_stop
        counter_max: {total_count: 65535, reject_count: 65535}
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
kpi:
  lateness_s: 5
  restate_horizon_s: 7200
  windows: [1m, 1h, shift, day]
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
        ("total_count", "good_count", "reject_count"), 2147483647
    )
    assert config.state_map_for(capper)["17"] == "changeover"
    assert config.state_map_for(capper)["6"] == "running"
    night = config.shifts_for(config.lines[1])[1]
    assert night.length_min == 12 * 60
    assert config.kpi.windows == ("1m", "1h", "shift", "day")


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
    }
    assert expected.items() <= record.items(), "expected.json drifted from this record"
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
    }


def test_kpi_schema_lists_the_record_fields() -> None:
    schema = load_schema(KPI_RECORD)
    assert list(schema["properties"]) == list(RECORD_FIELDS)
    assert schema["required"] == list(RECORD_FIELDS)
    assert schema["properties"]["window"]["enum"] == list(
        load_schema(PLANT_CONFIG)["$defs"]["windowKind"]["enum"]
    )


@pytest.mark.parametrize("record", [full_record(), line_record()], ids=["machine", "line"])
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
