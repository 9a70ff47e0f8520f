"""The claim gate (workers/delivery/gate.py) on a real Redis: attempts starting together are
checked in one ``ZMSCORE``; a claim whose watch left the schedule (a ``DELETE``) or that
another worker took over does not hold."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from relay import constants as c
from relay.store import Store
from workers.delivery.gate import ClaimGate


async def test_lanes_starting_together_cost_one_round_trip(redis: Redis) -> None:
    """50 lanes asking at once: one ZMSCORE; each answer compares the score to the token."""
    token = 1_900_000_000_000
    await redis.zadd(c.DELIVERY_SCHEDULE_KEY, {f"w{i}": token for i in range(50)})
    await redis.zrem(c.DELIVERY_SCHEDULE_KEY, "w3")  # cancelled
    await redis.zadd(c.DELIVERY_SCHEDULE_KEY, {"w7": token + 5})  # taken over
    gate = ClaimGate(Store(redis))
    got = await asyncio.gather(*(gate.holds(f"w{i}", token) for i in range(50)))
    assert [i for i, ok in enumerate(got) if not ok] == [3, 7]
    assert gate.round_trips == 1 and gate.checked == 50 and gate.dropped == 2


async def test_checks_asked_during_a_round_trip_go_in_the_next(redis: Redis) -> None:
    """Checks that arrive while one is in flight share the next round trip."""
    await redis.zadd(c.DELIVERY_SCHEDULE_KEY, {f"w{i}": 7 for i in range(20)})
    gate = ClaimGate(Store(redis))
    first = asyncio.ensure_future(gate.holds("w0", 7))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first ZMSCORE is on its way
    rest = [asyncio.ensure_future(gate.holds(f"w{i}", 7)) for i in range(1, 20)]
    assert await first and all(await asyncio.gather(*rest))
    assert gate.round_trips == 2


async def test_a_claim_that_redis_could_not_confirm_does_not_hold(redis: Redis) -> None:
    """Redis away while checking: the attempts are not made (a DELETE answered meanwhile
    must not be followed by one); their claims stay leased and come back after the lease."""
    store = Store(redis)
    await redis.zadd(c.DELIVERY_SCHEDULE_KEY, {"w1": 7, "w2": 7})

    async def away(_: object) -> list[float | None]:
        raise ConnectionError("Redis away")

    store.deliveries.claim_scores = away  # type: ignore[method-assign]
    gate = ClaimGate(store)
    assert await asyncio.gather(gate.holds("w1", 7), gate.holds("w2", 7)) == [False, False]
    assert gate.dropped == 2
