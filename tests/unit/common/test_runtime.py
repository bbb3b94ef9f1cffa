"""The one way a process runs its components: `run_until_stop` (linepulse/runtime.py).

Each component here is an `asynccontextmanager` that records when it opens and closes,
so that the tests check the order a process relies on: every task returns on the stop
event, and the components around the block close after their tasks, in reverse order,
on error as on a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from linepulse.runtime import Served, Task, run_until_stop


@dataclass
class Loop:
    """A component with one task that counts its rounds until stopped (or fails)."""

    name: str
    journal: list[str]
    fail: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def tasks(self) -> tuple[Task, ...]:
        return (Task(self.name, self.run),)

    @property
    def served(self) -> tuple[Served, ...]:
        return ()

    async def run(self, stop: asyncio.Event) -> None:
        self.started.set()
        if self.fail:
            raise RuntimeError(f"{self.name} failed")
        await stop.wait()
        self.journal.append(f"{self.name} returned")


@contextlib.asynccontextmanager
async def open_loop(name: str, journal: list[str], *, fail: bool = False) -> AsyncIterator[Loop]:
    journal.append(f"{name} opened")
    try:
        yield Loop(name, journal, fail)
    finally:
        journal.append(f"{name} closed")


async def test_tasks_return_on_stop_then_components_close_in_reverse_order() -> None:
    journal: list[str] = []
    stop = asyncio.Event()
    async with (
        open_loop("a", journal) as first,
        open_loop("b", journal) as second,
        run_until_stop(stop) as running,
    ):
        running.add(first)
        running.add(second)
        await first.started.wait()
        await second.started.wait()
        journal.append("stop")
        stop.set()
    assert journal[:3] == ["a opened", "b opened", "stop"]
    assert sorted(journal[3:5]) == ["a returned", "b returned"]
    assert journal[5:] == ["b closed", "a closed"]


async def test_a_failing_task_stops_the_others_and_still_closes_every_component() -> None:
    journal: list[str] = []

    async def run() -> None:
        async with (
            open_loop("a", journal) as steady,
            open_loop("b", journal, fail=True) as failing,
            run_until_stop(asyncio.Event()) as running,
        ):
            running.add(steady)
            await steady.started.wait()
            running.add(failing)

    with pytest.raises(ExceptionGroup) as failed:
        await run()
    assert [str(error) for error in failed.value.exceptions] == ["b failed"]
    assert "a returned" not in journal  # cancelled, not stopped
    assert journal[-2:] == ["b closed", "a closed"]


async def test_tasks_started_in_stages_all_run_under_the_same_stop() -> None:
    """The demo's shape: a first task, then more once it is ready."""
    journal: list[str] = []
    stop = asyncio.Event()
    first, later = Loop("first", journal), Loop("later", journal)
    async with run_until_stop(stop) as running:
        running.start(*first.tasks)
        await first.started.wait()
        running.start(*later.tasks)
        await later.started.wait()
        stop.set()
    assert sorted(journal) == ["first returned", "later returned"]
