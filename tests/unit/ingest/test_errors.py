"""The ingest errors are named in one module under the LinePulse base, and the modules
that raise them raise those very classes."""

from __future__ import annotations

import pytest

from linepulse.errors import LinePulseError
from services.ingest import errors, mqtt_payload, opcua_values, sparkplug, spool, spooled_sink

RAISED_BY = [
    (errors.PayloadError, mqtt_payload.PayloadError, ValueError),
    (errors.SparkplugError, sparkplug.SparkplugError, ValueError),
    (errors.UnsupportedValue, opcua_values.UnsupportedValue, ValueError),
    (errors.SpoolError, spool.SpoolError, Exception),
    (errors.SinkClosedError, spooled_sink.SinkClosedError, RuntimeError),
]


@pytest.mark.parametrize(("named", "raised", "builtin"), RAISED_BY)
def test_each_ingest_error_is_one_class_under_the_service_base(
    named: type[Exception], raised: type[Exception], builtin: type[Exception]
) -> None:
    assert raised is named
    assert issubclass(named, errors.IngestError)
    assert issubclass(named, LinePulseError)
    assert issubclass(named, builtin)  # callers catching the built-in still catch it


def test_a_payload_error_carries_its_reason_as_detail() -> None:
    with pytest.raises(errors.IngestError) as caught:
        mqtt_payload.parse_plain(b"")
    assert caught.value.detail == "empty payload"
    assert str(caught.value) == "empty payload"
