"""The KPI record contract, checked in one place against `KpiRecord`, the one definition
of its fields: the alert rules' `KpiField` literal, the JSON Schema (names and types) and
the store's columns. (The core's records are checked field by field in
tests/unit/kpi/core/test_record_contract.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import duckdb
import pytest
from pydantic import BaseModel

from linepulse.alerting import KpiField
from linepulse.config import WINDOW_KINDS, parse_config
from linepulse.production import LOSS_KEYS
from linepulse.records import (
    NUMERIC_FIELDS,
    RECORD_FIELDS,
    RECORD_TYPES,
    FieldType,
    ProductRun,
    field_type,
    record_fields,
)
from services.kpi.store import KpiStore

SCHEMA = Path(__file__).parents[3] / "schemas" / "kpi-record.schema.json"

# A field's JSON Schema type by its kind (a time is RFC 3339 text).
JSON_TYPE = {
    "string": "string",
    "datetime": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "object": "object",
}
# A kind's DuckDB column type as information_schema names it.
DUCKDB_TYPE = {
    "string": "VARCHAR",
    "datetime": "TIMESTAMP",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "object": "VARCHAR",
}


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text("utf-8"))
    return loaded


def resolved(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`prop` with its `$ref` (to `#/$defs/...`) merged in."""
    ref = prop.get("$ref")
    if ref is None:
        return prop
    return {**resolved(defs[ref.removeprefix("#/$defs/")], defs), **prop}


def json_types(prop: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a schema property admits (through $ref, oneOf, anyOf and enum)."""
    prop = resolved(prop, defs)
    for combinator in ("oneOf", "anyOf"):
        if combinator in prop:
            return set().union(*(json_types(p, defs) for p in prop[combinator]))
    if "enum" in prop:
        names = {str: "string", int: "integer", float: "number", type(None): "null"}
        return {names[type(value)] for value in prop["enum"]}
    kinds = prop["type"]
    return set(kinds) if isinstance(kinds, list) else {kinds}


def model_types(kind: FieldType) -> set[str]:
    return {JSON_TYPE[kind.kind]} | ({"null"} if kind.nullable else set())


def test_a_kpi_rule_can_watch_every_numeric_field_of_the_record_but_revision() -> None:
    watched = get_args(KpiField)
    assert len(watched) == len(set(watched))
    assert set(watched) == set(NUMERIC_FIELDS) - {"revision"}
    assert {"oee", "nee", "teep", "oee_constraint", "projected_count", "down_s"} <= set(watched)


def test_the_schema_has_the_records_fields_with_their_types() -> None:
    document = schema()
    properties, defs = document["properties"], document["$defs"]
    assert list(properties) == list(RECORD_FIELDS)
    assert document["required"] == list(RECORD_FIELDS)
    assert document["additionalProperties"] is False
    wrong = {
        name: (json_types(properties[name], defs), model_types(kind))
        for name, kind in RECORD_TYPES.items()
        if json_types(properties[name], defs) != model_types(kind)
    }
    assert wrong == {}, "schema type != model type"
    times = [n for n, p in properties.items() if resolved(p, defs).get("format") == "date-time"]
    assert times == [n for n, kind in RECORD_TYPES.items() if kind.kind == "datetime"]
    assert properties["window"]["enum"] == list(WINDOW_KINDS)
    product_run = defs["productRun"]
    assert list(product_run["properties"]) == list(ProductRun.model_fields)
    assert product_run["required"] == list(ProductRun.model_fields)
    losses = properties["losses"]["oneOf"][0]
    assert tuple(losses["properties"]) == tuple(losses["required"]) == LOSS_KEYS


def test_the_stores_columns_have_the_records_fields_with_their_types(tmp_path: Path) -> None:
    plant = parse_config(
        {"site": "s", "shifts": [{"name": "a", "start": "06:00", "end": "14:00"}],
         "lines": [{"id": "l1", "machines": [{"id": "m1", "ideal_cycle_time_s": 1}]}]}
    )  # fmt: skip
    path = tmp_path / "kpi.duckdb"
    with KpiStore(path, plant):
        pass
    with duckdb.connect(str(path), read_only=True) as db:
        columns = db.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'kpi_records' ORDER BY ordinal_position"
        ).fetchall()
    assert [name for name, _, _ in columns] == list(RECORD_FIELDS)
    key = {"line", "machine", "window", "window_start"}  # `machine` is '' on a line record
    assert {name: (sql, nullable == "YES") for name, sql, nullable in columns} == {
        name: (DUCKDB_TYPE[kind.kind], kind.nullable and name not in key)
        for name, kind in RECORD_TYPES.items()
    }


class Odd(BaseModel):
    tags: list[str]
    either: int | str


@pytest.mark.parametrize("name", ["tags", "either"])
def test_a_field_of_a_type_the_contract_has_no_column_for_is_refused(name: str) -> None:
    with pytest.raises(TypeError, match="no record field type"):
        field_type(Odd.model_fields[name].annotation)


def test_a_selection_of_fields_names_the_one_the_record_lacks() -> None:
    assert record_fields("oee", "teep") == ("oee", "teep")
    with pytest.raises(KeyError, match=r"\['oeee'\]"):
        record_fields("oee", "oeee")
