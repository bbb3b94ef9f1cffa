"""Core state checkpoints: the state of one partition together with the offset it covers.

A worker that takes over a partition loads its checkpoint and seeks to the offset stored
in it, so it resumes exactly where the last owner left off: no sample lost, none counted
twice. The state and its offset are written in one file, atomically (write, fsync,
rename), so they can never disagree.

The store is a directory; workers of one group must share it (one host, or a shared
volume).
"""

from __future__ import annotations

import io
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import msgpack
import polars as pl

from services.kpi.core.engine import Core, CoreState, CoreStats, Emitted

# 2: product frames, and the beyond-OEE atoms and record values.
FORMAT_VERSION = 3
_FRAMES = ("recent", "older", "older_last", "atoms", "reasons", "acc", "racc", "patoms", "pacc")
_FRAME_SCHEMAS = {
    "recent": "samples",
    "older": "samples",
    "older_last": "samples",
    "atoms": "atoms",
    "reasons": "reasons",
    "acc": "acc",
    "racc": "racc",
    "patoms": "patoms",
    "pacc": "pacc",
}


class CheckpointError(Exception):
    """A checkpoint exists but cannot be used (corrupt, or from another format)."""


def dump_state(state: CoreState, offset: int, extra: dict[str, Any] | None = None) -> bytes:
    """Serialise a core state, the next offset to read after it, and the caller's extras
    (plain msgpack data, e.g. machine statuses) that must move with the partition."""
    frames = {}
    for name in _FRAMES:
        buffer = io.BytesIO()
        frame: pl.DataFrame = getattr(state, name)
        frame.write_ipc(buffer, compression="lz4")
        frames[name] = buffer.getvalue()
    emitted = [
        [key[0], key[1], key[2], key[3], e.revision, e.final, e.end, list(e.values), e.tick]
        for key, e in state.emitted.items()
    ]
    document = {
        "version": FORMAT_VERSION,
        "offset": offset,
        "frames": frames,
        "first_seen": state.first_seen,
        "lines": None if state.lines is None else sorted(state.lines),
        "first": state.first,
        "epoch": state.epoch,
        "counters_seen": {m: sorted(c) for m, c in state.counters_seen.items()},
        "emitted": emitted,
        "high": state.high,
        "cut": state.cut,
        "older_min": state.older_min,
        "stats": {f.name: getattr(state.stats, f.name) for f in fields(CoreStats)},
        "extra": extra or {},
    }
    packed: bytes = msgpack.packb(document, use_bin_type=True)
    return packed


def load_state(core: Core, data: bytes) -> tuple[CoreState, int, dict[str, Any]]:
    """State, offset and extras of a checkpoint, frames cast to this plant's schemas."""
    try:
        document: dict[str, Any] = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if document.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint format {document.get('version')!r} is not {FORMAT_VERSION}"
            )
        frames = {}
        for name in _FRAMES:
            schema: pl.Schema = getattr(core.schemas, _FRAME_SCHEMAS[name])
            frame = pl.read_ipc(io.BytesIO(document["frames"][name]))
            # Casting through text maps Enum categories by name, so a config that gained
            # machines still reads an older checkpoint.
            frames[name] = frame.with_columns(
                pl.col(c).cast(pl.String) for c in ("machine", "signal") if c in frame.columns
            ).cast(schema)
        emitted = {
            (line, machine, window, start): Emitted(revision, final, end, _values(values), tick)
            for line, machine, window, start, revision, final, end, values, tick in document[
                "emitted"
            ]
        }
        state = CoreState(
            **frames,
            first_seen=dict(document["first_seen"]),
            lines=None if document["lines"] is None else frozenset(document["lines"]),
            first=document["first"],
            epoch=int(document["epoch"]),
            counters_seen={m: frozenset(c) for m, c in document["counters_seen"].items()},
            emitted=emitted,
            high=document["high"],
            cut=document["cut"],
            older_min=document["older_min"],
            stats=CoreStats(**document["stats"]),
        )
        return state, int(document["offset"]), dict(document.get("extra") or {})
    except CheckpointError:
        raise
    except (
        KeyError,
        TypeError,
        ValueError,
        msgpack.UnpackException,
        pl.exceptions.PolarsError,
    ) as e:
        raise CheckpointError(f"checkpoint is unreadable: {e}") from e


def _values(values: list[Any]) -> tuple[Any, ...]:
    # Emitted values nest tuples (reasons, products); msgpack gives lists back.
    return tuple(_values(v) if isinstance(v, list) else v for v in values)


class DirectoryStore:
    """Checkpoints as files `<dir>/<name>.ckpt`, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.directory / f"{safe}.ckpt"

    def save(self, name: str, data: bytes) -> None:
        path = self._path(name)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)

    def load(self, name: str) -> bytes | None:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
