"""The `sources` and `ingest` sections of the plant config: what loads and what is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from linepulse.config import ConfigError, parse_config
from linepulse.sources import Credentials, MqttTopic


def plant(**sections: Any) -> dict[str, Any]:
    return {
        "site": "s",
        "lines": [{"id": "L1", "machines": [{"id": "m1", "ideal_cycle_time_s": 1}, {"id": "m2"}]}],
        **sections,
    }


def test_sources_load_with_node_id_shorthand_and_browse_paths() -> None:
    config = parse_config(
        plant(
            sources={
                "opcua": [
                    {
                        "id": "plc",
                        "endpoint": "opc.tcp://127.0.0.1:4840",
                        "machines": [
                            {
                                "machine": "m1",
                                "nodes": {
                                    "state": "ns=2;s=m1.State",
                                    "temperature": {"browse_path": "2:m1/2:Temp", "deadband": 0.5},
                                },
                            }
                        ],
                    }
                ],
                "mqtt": [
                    {
                        "id": "broker",
                        "topics": [{"pattern": "plant/{line}/{machine}/{signal}"}],
                        "machines": ["m2"],
                    }
                ],
            }
        )
    )
    nodes = config.sources.opcua[0].machines[0].nodes
    assert nodes["state"].node_id == "ns=2;s=m1.State"
    assert nodes["temperature"].browse_path == "2:m1/2:Temp"
    assert config.sources.mqtt[0].topics[0].subscription() == "plant/+/+/+"
    assert config.sources.ids() == ["plc", "broker"]


def opcua(machine: str = "m1", node: Any = "i=1", **over: Any) -> dict[str, Any]:
    source = {"id": "p", "endpoint": "opc.tcp://h:1"} | over
    return {"opcua": [source | {"machines": [{"machine": machine, "nodes": {"state": node}}]}]}


def mqtt(*sources: dict[str, Any]) -> dict[str, Any]:
    return {"mqtt": [{"id": "b", "topics": [{"pattern": "p/{machine}"}]} | s for s in sources]}


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (opcua(endpoint="http://x"), "sources.opcua[0].endpoint"),
        (opcua(machine="nope"), "sources.opcua[0].machines[0].machine: unknown machine 'nope'"),
        (opcua(node={}), "give exactly one of node_id and browse_path"),
        (opcua(security={"mode": "SignAndEncrypt"}), "needs certificate and private_key"),
        ({"mqtt": [{"id": "b"}]}, "give topics, sparkplug or both"),
        (mqtt({"topics": [{"pattern": "plant/{signal}"}]}), "must contain {machine}"),
        (mqtt({"topics": [{"pattern": "plant/+/{machine}"}]}), "not MQTT wildcards"),
        (mqtt({"topics": [{"pattern": "p/x{machine}"}]}), "whole topic level"),
        (
            mqtt({"machines": ["m1"]}, {"id": "c", "machines": ["m1"]}),
            "sources.mqtt[1].machines[0]: machine 'm1' is already read from 'b'",
        ),
        (mqtt({}, {}), "source id 'b' is used twice"),
        (
            mqtt({"sparkplug": {"group": "g", "devices": {"e/d": "ghost"}}}),
            "sources.mqtt[0].sparkplug.devices.e/d: unknown machine 'ghost'",
        ),
        (
            mqtt({"credentials": {"username": "u", "password": "p", "password_env": "X"}}),
            "give one of password, password_env, password_file",
        ),
        (mqtt({"mqtt_version": 4}), "sources.mqtt[0].mqtt_version: Input should be '5' or"),
        (mqtt({"session_expiry_s": -1}), "sources.mqtt[0].session_expiry_s"),
    ],
)
def test_bad_sources_are_refused_naming_the_key(sources: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(plant(sources=sources))
    assert message in str(caught.value)


def test_passwords_come_from_the_environment_or_a_file_and_stay_out_of_reprs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LP_TEST_SECRET", "from-env")
    assert Credentials(username="u", password_env="LP_TEST_SECRET").secret() == "from-env"
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    assert Credentials(username="u", password_file=secret_file).secret() == "from-file"
    inline = Credentials(username="u", password="hunter2")
    assert inline.secret() == "hunter2"
    assert "hunter2" not in repr(inline)
    monkeypatch.delenv("LP_TEST_SECRET")
    with pytest.raises(ValueError, match="LP_TEST_SECRET is not set"):
        Credentials(username="u", password_env="LP_TEST_SECRET").secret()


def test_a_topic_pattern_subscribes_with_one_wildcard_per_placeholder() -> None:
    assert MqttTopic(pattern="a/{line}/b/{machine}").subscription() == "a/+/b/+"


@pytest.mark.parametrize(
    ("given", "version"),
    [({}, "5"), ({"mqtt_version": 5}, "5"), ({"mqtt_version": "3.1.1"}, "3.1.1")],
)
def test_the_mqtt_version_is_5_unless_given_and_a_yaml_number_counts(
    given: dict[str, Any], version: str
) -> None:
    config = parse_config(plant(sources=mqtt(given)))
    assert config.sources.mqtt[0].mqtt_version == version
