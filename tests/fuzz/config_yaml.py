"""Fuzz target: the plant config loader, from the bytes of a YAML file.

Seeds are the example plants, so mutation starts from documents that reach every section
(shifts, reasons, lines, sources, alerts). Contract: `load_config` returns a `PlantConfig`
or raises `ConfigError` whose message names the file and, for an invalid document, each key
at fault; never a raw KeyError, TypeError, AttributeError or a YAML/pydantic exception.

    python -m tests.fuzz.config_yaml -atheris_runs=20000
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["linepulse"]):
    from linepulse.config import ConfigError, load_config

from tests.fuzz.harness import check_reason, fuzz

EXAMPLES = Path(__file__).parents[2] / "examples"
FILE = Path(tempfile.mkdtemp(prefix="linepulse-fuzz-config-")) / "plant.yaml"


def test_one_input(data: bytes) -> None:
    FILE.write_bytes(data)
    try:
        load_config(FILE)
    except ConfigError as error:
        check_reason(error)
        message = str(error)
        assert str(FILE) in message, message
        if " is invalid:\n" in message:
            for line in message.split("\n")[1:]:
                key, sep, why = line.partition(": ")
                assert all((key, sep, why)), f"a problem without its key: {line!r}"


def main() -> None:
    fuzz(test_one_input, [p.read_bytes() for p in sorted(EXAMPLES.glob("*/plant.yaml"))])


if __name__ == "__main__":
    main()
    sys.exit(0)
