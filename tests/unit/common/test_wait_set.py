"""`wait_set` lets a cancellation through even when the event is set in the same loop step;
Python 3.11's `asyncio.wait_for` does not (the MQTT ingester hung at stop because of it)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import pytest

from linepulse.runtime import wait_set


async def _cancelled_as_set(wait: Callable[[asyncio.Event], Awaitable[object]]) -> bool:
    """Whether a task waiting with `wait` ends cancelled when the event is set and the task
    cancelled in the same step (as a stop does to a loop waiting on its wake event)."""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while rounds < 2:  # a second round is what hung: the cancellation was lost
            rounds += 1
            await wait(event)
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.01)
    event.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    return task.cancelled()


async def test_a_cancellation_in_the_step_the_event_is_set_ends_the_task() -> None:
    assert await _cancelled_as_set(lambda event: wait_set(event, 5))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was rewritten in 3.12")
async def test_wait_for_loses_it_on_3_11() -> None:
    """Why `wait_set` exists: this is the behaviour it avoids."""
    assert not await _cancelled_as_set(lambda event: asyncio.wait_for(event.wait(), 5))


async def test_it_says_whether_the_event_is_set() -> None:
    event = asyncio.Event()
    assert not await wait_set(event, 0.01)
    event.set()
    assert await wait_set(event, 0.01)
