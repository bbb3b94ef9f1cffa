"""The topic bus: Kafka through aiokafka, or an in-process broker with the same interface.

Services take a `KafkaClients` (default `AIOKAFKA`) and never name a client class, so
running on a real broker or in one process is the caller's configuration, not a code
change (docs/deploy.md).
"""

from linepulse.bus.clients import (
    AIOKAFKA,
    Admin,
    AioKafkaClients,
    Consumer,
    KafkaClients,
    Producer,
    RecordBatch,
    TransactionalProducer,
)
from linepulse.bus.memory import InProcessBroker, InProcessClients, StoredRecord

__all__ = [
    "AIOKAFKA",
    "Admin",
    "AioKafkaClients",
    "Consumer",
    "InProcessBroker",
    "InProcessClients",
    "KafkaClients",
    "Producer",
    "RecordBatch",
    "StoredRecord",
    "TransactionalProducer",
]
