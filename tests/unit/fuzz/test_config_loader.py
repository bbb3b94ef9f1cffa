"""Property: any YAML document either loads as a plant or is refused with `ConfigError`,
whose message names the file and, for each problem, the key at fault. Never a raw
KeyError, TypeError, AttributeError, or a YAML or pydantic exception.

Documents are the example plant with a few keys replaced, removed or added, so every
section (shifts, reasons, products, sources, alerts) meets values of every YAML type.
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from linepulse.config import ConfigError, PlantConfig, load_config, parse_config

EXAMPLES = Path(__file__).parents[3] / "examples"
PLANT = yaml.safe_load((EXAMPLES / "simulated-plant" / "plant.yaml").read_text())
TOP_KEYS = set(PlantConfig.model_fields)
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["06:00", "25:00", "", "UTC", "Mars/Olympus", "json", "-1", "0", "1e309"]),
    st.dates(min_value=date(1, 1, 1)),
    st.datetimes(),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in the document a value sits: dict keys and list indexes."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*prefix, index))
    return found


PATHS = paths(PLANT)


@st.composite
def documents(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(PLANT)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent: Any = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if action == "delete":
                del parent[path[-1]]
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.text(max_size=6))] = draw(yaml_values)
            else:
                parent[path[-1]] = draw(yaml_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced this path
    if draw(st.integers(0, 20)) == 0:
        return draw(yaml_values)  # not a mapping at all
    return doc


def check_refusal(error: ConfigError, source: str) -> None:
    message = str(error)
    assert message.startswith(source), message
    if " is invalid:\n" not in message:
        return
    for line in message.split("\n")[1:]:
        key, sep, why = line.partition(": ")
        assert sep, f"a problem without its key: {line!r}"
        assert why.strip(), line
        first = key.split(".")[0].split("[")[0]
        unknown = line.endswith(": unknown key (check its spelling and indentation)")
        named = first in TOP_KEYS or key == "(top level)" or unknown
        assert named, f"{key!r} is not a key of the plant: {line!r}"


@SETTINGS
@given(doc=documents())
def test_any_document_loads_or_names_the_key_at_fault(doc: Any) -> None:
    try:
        parse_config(doc, "plant.yaml")
    except ConfigError as error:
        check_refusal(error, "plant.yaml")


@SETTINGS
@given(doc=documents())
def test_any_yaml_file_loads_or_is_refused_with_the_file_named(doc: Any, tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    try:
        load_config(path)
    except ConfigError as error:
        check_refusal(error, str(path))


@SETTINGS
@given(text=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@example(text=b"?")  # found in CI: YAML's `?` is {None: None}, a key that is not text
@example(text=b"site: a\nlines: []\n3: x\n")
def test_any_bytes_are_a_plant_or_a_config_error(text: bytes, tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_bytes(text)
    try:
        load_config(path)
    except ConfigError as error:
        check_refusal(error, str(path))


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Found by the config fuzzer: this was a raw UnicodeDecodeError."""
    path = tmp_path / "plant.yaml"
    path.write_bytes((EXAMPLES / "classic-oee" / "plant.yaml").read_bytes() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte \d+\): save it as UTF-8"):
        load_config(path)


def test_the_example_still_loads() -> None:
    """The mutations start from a valid plant; a test that only ever saw refusals would
    prove little."""
    assert parse_config(copy.deepcopy(PLANT)).site == "plant-sim"


def test_a_key_that_is_empty_or_a_newline_is_quoted_in_the_error() -> None:
    """Found by the YAML property: an unknown key "\\n" split the message mid-problem."""
    doc = copy.deepcopy(PLANT)
    keys = ("\n", "", "a.b", "0\n")
    doc.update(dict.fromkeys(keys, 1))
    with pytest.raises(ConfigError) as caught:
        parse_config(doc, "plant.yaml")
    assert str(caught.value).split("\n")[1:] == [
        f"[{key!r}]: unknown key (check its spelling and indentation)" for key in keys
    ]
