"""What can go wrong in the ingest service, by name.

`IngestError` is the service's base, a `LinePulseError` (linepulse/errors.py) like the
KPI's and the alerts' errors, so every LinePulse error has one root. Ingest serves no
HTTP API, so the `status_code` each one carries is nominal (the base's 500): nothing maps
it to a response. What the errors do carry is the reason: a bad payload or value is
data, not a crash, and its message becomes the dead letter's `reason` (the payload,
Sparkplug and value errors) or the one line the operator reads (the spool's and the
sink's).

Each error keeps the built-in base it had (`ValueError` for input that cannot be read,
`RuntimeError` for a closed sink), so code that catches those still does.
"""

from __future__ import annotations

from linepulse.errors import LinePulseError


class IngestError(LinePulseError):
    """Base of the ingest service's errors (nominally HTTP 500: ingest has no HTTP API)."""


class PayloadError(IngestError, ValueError):
    """An MQTT plain-topic or JSON message that cannot be read; the message says why
    (services/ingest/mqtt_payload.py)."""


class SparkplugError(IngestError, ValueError):
    """A payload or topic that is not usable Sparkplug B; the message says why
    (services/ingest/sparkplug.py)."""


class UnsupportedValue(IngestError, ValueError):
    """An OPC-UA notification's value has no telemetry form (array, structure, missing);
    the message is the dead letter's reason (services/ingest/opcua_values.py)."""


class SpoolError(IngestError):
    """The spool folder cannot be used (an entry read back does not match its checksum;
    services/ingest/spool.py)."""


class SinkClosedError(IngestError, RuntimeError):
    """`put` or `dead_letter` after the Kafka sink's `close()`
    (services/ingest/spooled_sink.py)."""
