"""OPC-UA node addresses in the plant config: refused at load, with the key named, when
the ingester could never find them; `nsu=` NodeIds accepted (resolved at connect)."""

from __future__ import annotations

from typing import Any

import pytest

from linepulse.config import ConfigError, PlantConfig, parse_config


def _plant(nodes: dict[str, Any]) -> PlantConfig:
    return parse_config(
        {
            "site": "test",
            "lines": [{"id": "line-1", "machines": [{"id": "press-1"}]}],
            "sources": {
                "opcua": [
                    {
                        "id": "plc-1",
                        "endpoint": "opc.tcp://127.0.0.1:4840",
                        "machines": [{"machine": "press-1", "nodes": nodes}],
                    }
                ]
            },
        }
    )


@pytest.mark.parametrize(
    "node_id",
    [
        "nsu=urn:plant:press;s=Press1.State",
        "nsu=http://vendor.example/UA/Press/;i=6001",
        "ns=2;s=press-1.State",
        "ns=3;i=1001",
        "i=2258",
        "ns=2;s=a;b",  # a string identifier may hold ';'
        "ns=1;g=09087e75-8e5e-499b-954f-f2a9603db28a",
        "ns=1;b=M/RbKBsRVkePCePcx24oRA==",
    ],
)
def test_node_ids_in_every_form_are_accepted(node_id: str) -> None:
    plant = _plant({"state": node_id})
    assert plant.sources.opcua[0].machines[0].nodes["state"].node_id == node_id


def test_browse_paths_with_namespace_indexes_are_accepted() -> None:
    plant = _plant({"state": {"browse_path": "2:Line1/2:Press1/3:State.Value"}})
    assert plant.sources.opcua[0].machines[0].nodes["state"].browse_path == (
        "2:Line1/2:Press1/3:State.Value"
    )


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (
            {"state": {"browse_path": "Objects/Press1/State"}},
            "sources.opcua[0].machines[0].nodes.state.browse_path: browse path "
            "'Objects/Press1/State': step 'Objects' must be <namespace index>:<name>",
        ),
        (
            {"total_count": {"browse_path": "2:Press1/Count"}},
            "nodes.total_count.browse_path: browse path '2:Press1/Count': step 'Count' must be",
        ),
        (
            {"state": {"browse_path": "2:Press1//2:State"}},
            "nodes.state.browse_path: browse path '2:Press1//2:State' has an empty step",
        ),
        (
            {"state": "Press1.State"},
            "nodes.state.node_id: 'Press1.State' is not a NodeId",
        ),
        (
            {"state": "ns=two;s=Press1.State"},
            "nodes.state.node_id: 'ns=two;s=Press1.State' is not a NodeId",
        ),
        (
            {"state": "nsu=;s=Press1.State"},
            "nodes.state.node_id: 'nsu=;s=Press1.State' is not a NodeId",
        ),
    ],
)
def test_addresses_the_ingester_could_never_find_are_refused_with_the_key(
    nodes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _plant(nodes)
    assert message in str(caught.value)
