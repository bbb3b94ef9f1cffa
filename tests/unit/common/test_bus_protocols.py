"""The bus protocols are the services' whole view of a Kafka client: public methods only,
each one offered by aiokafka's client and by the in-process bus alike."""

from __future__ import annotations

import inspect

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from linepulse.bus import Admin, Consumer, Producer
from linepulse.bus.memory import InProcessAdmin, InProcessConsumer, InProcessProducer

# Attributes every class has, Protocol's machinery included: not part of an interface.
_MACHINERY = frozenset(dir(object)) | {"__abstractmethods__", "__annotations__", "__dict__"}


def members(protocol: type) -> set[str]:
    """What the protocol asks of a client: its methods and its annotated attributes."""
    names = {n for n, v in vars(protocol).items() if inspect.isfunction(v)}
    return names | set(inspect.get_annotations(protocol))


@pytest.mark.parametrize("protocol", [Producer, Consumer, Admin])
def test_a_bus_protocol_asks_for_public_members_only(protocol: type) -> None:
    private = {n for n in members(protocol) if n.startswith("_") and n not in _MACHINERY}
    assert not private, f"{protocol.__name__} reaches into a client's internals: {private}"


@pytest.mark.parametrize(
    ("protocol", "implementations"),
    [
        (Producer, (AIOKafkaProducer, InProcessProducer)),
        (Consumer, (AIOKafkaConsumer, InProcessConsumer)),
        (Admin, (AIOKafkaAdminClient, InProcessAdmin)),
    ],
)
def test_both_buses_offer_every_protocol_method(
    protocol: type, implementations: tuple[type, ...]
) -> None:
    for implementation in implementations:
        missing = {n for n in members(protocol) if not hasattr(implementation, n)}
        assert not missing, f"{implementation.__name__} lacks {missing}"
