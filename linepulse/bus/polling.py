"""A poll that returns what the broker has now, not what was fetched a cycle ago.

aiokafka's consumer fetches in the background, but holds at most one fetched batch per
partition: the next fetch for a partition is sent only once `getmany` has handed out the
last one (aiokafka/consumer/fetcher.py, `_get_actions_per_node`). A loop that polls, then
works for a while (the KPI worker steps its partitions for a few hundred milliseconds),
therefore gets on its next poll the batch fetched just after the previous poll, while
everything that reached the broker during its work waits for the poll after: a record
waits for up to two work cycles instead of one. Traced at 20,000 events/s over 1,000
machines, that second cycle was a third of the end-to-end latency (bench/README.md,
"Trace").

`poll_fresh` polls once as `getmany` does and, if that returned records, once more for
`TOP_UP_MS`: the first poll's drain has sent the next fetch, and a broker that holds more
records answers it within a few milliseconds, so they join this poll. With nothing
more on the broker the second poll costs `TOP_UP_MS` and returns nothing.
"""

from __future__ import annotations

from typing import Final

from linepulse.bus.clients import Consumer, Fetched

# Long enough for a fetch to a broker on the same network to come back with records
# (a few ms), short enough to cost nothing worth measuring when none are there.
TOP_UP_MS: Final = 15


async def poll_fresh(
    consumer: Consumer, timeout_ms: int, max_records: int, top_up_ms: int = TOP_UP_MS
) -> Fetched:
    """`consumer.getmany(timeout_ms=..., max_records=...)` topped up with what the
    broker held when it returned (waiting up to `top_up_ms` for it); at most
    `max_records`, each partition's records in offset order."""
    batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    room = max_records - sum(len(records) for records in batch.values())
    if not batch or room <= 0:
        return batch
    more = await consumer.getmany(timeout_ms=top_up_ms, max_records=room)
    for tp, records in more.items():
        batch[tp] = [*batch.get(tp, ()), *records]
    return batch
