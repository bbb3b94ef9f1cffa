"""What a source remembers across restarts of the ingester, one JSON file per source under
`ingest.state_dir`: today a Sparkplug B host's sessions (alias tables, bdSeq, seq), so data
after a restart decodes at once instead of waiting for a rebirth.

A file is replaced whole (written beside it, fsync'd, renamed over it), so a crash leaves
the old one or the new one, never half of one. A file that cannot be read or parsed is
logged and ignored: the source then starts as it would without it (it asks for births).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)


class SourceStateFile:
    """One source's state document on disk."""

    def __init__(self, folder: Path, source_id: str, kind: str) -> None:
        self.path = folder / f"{kind}-{source_id}.json"

    def load(self) -> dict[str, Any] | None:
        """The saved document, or None (none saved, or unreadable: logged)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("%s: cannot read (%s); starting without it", self.path, error.strerror)
            return None
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as error:
            log.warning("%s: not JSON (%s); starting without it", self.path, error)
            return None
        if not isinstance(doc, dict):
            log.warning("%s: not a JSON object; starting without it", self.path)
            return None
        return doc

    def save(self, doc: dict[str, Any]) -> None:
        """Replace the file with `doc`, atomically; an error is logged, not raised (the
        source goes on; a restart then asks for births as without the file)."""
        temporary = self.path.with_suffix(".json.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as out:
                out.write(orjson.dumps(doc))
                out.flush()
                os.fsync(out.fileno())
            temporary.replace(self.path)
        except OSError as error:
            log.error("%s: cannot save the source's state (%s)", self.path, error.strerror)
