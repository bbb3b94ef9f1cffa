"""The pure pieces of the HTTP guard (linepulse/http/guard.py): how a request presents a
token, and the token buckets on a hand-driven clock. The guard itself, on real apps, is
in tests/unit/kpi/test_api_security.py and tests/integration/test_api_tls.py."""

from __future__ import annotations

import pytest

from linepulse.http.guard import TokenBuckets, _presented


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({b"authorization": b"Bearer abc"}, b"abc"),
        ({b"authorization": b"bearer   abc  "}, b"abc"),
        ({b"authorization": b"Basic YTpi"}, None),
        ({b"authorization": b"Bearer "}, None),
        ({b"x-api-key": b" k1 "}, b"k1"),
        ({b"authorization": b"Basic YTpi", b"x-api-key": b"k1"}, b"k1"),
        ({b"authorization": b"Bearer abc", b"x-api-key": b"k1"}, b"abc"),
        ({}, None),
    ],
)
def test_a_token_is_presented_as_bearer_or_api_key(
    headers: dict[bytes, bytes], expected: bytes | None
) -> None:
    assert _presented(headers) == expected


def test_a_bucket_lets_its_burst_through_then_says_how_long_to_wait() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=0.5, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)  # one token every 2 s
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 1.0
    assert buckets.take("a") == pytest.approx(1.0)  # half a token back, refusal not counted
    clock.now += 1.0
    assert buckets.take("a") == 0.0
    clock.now += 3600.0
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refills to the burst, no further


def test_a_zero_rate_turns_the_limit_off_and_buckets_stay_bounded() -> None:
    clock = Clock()
    assert all(TokenBuckets(0, 1, clock).take("a") == 0 for _ in range(100))
    buckets = TokenBuckets(rate=1.0, burst=1, clock=clock, max_keys=3)
    for client in ("a", "b", "c", "d"):
        buckets.take(client)
    assert len(buckets) == 3
    assert buckets.take("a") == 0.0  # "a" was the oldest: dropped, so a full bucket again
    assert buckets.take("d") > 0
