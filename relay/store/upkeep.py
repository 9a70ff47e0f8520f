"""What a process says of itself to Redis every few seconds, and what a worker reads back
for its gauges: each one round trip, with Redis' clock learnt again from it.

A worker says how far its claims reach (its ``RELAY_LEASE``: ``clip-relay upstream resume``
keeps clear of them, :meth:`relay.store.limits.Limits.workers_lease_s`) and which
``RELAY_SECRETS_KEY`` keys it holds (what ``secrets reseal`` checks first); the API says the
keys. The worker's round also reads the schedules' sizes, the status counters, the
upstream's pause and Redis' memory: its ``/metrics`` gauges (:mod:`workers.health`).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from relay import constants as c
from relay.domain import clock
from relay.store.reseal import say_keys
from relay.store.watches import counts_of

QUEUES = (
    ("poll", c.POLL_SCHEDULE_KEY),
    ("delivery", c.DELIVERY_SCHEDULE_KEY),
    ("expiry", c.EXPIRY_SCHEDULE_KEY),
)


@dataclass(slots=True, frozen=True)
class WorkerRound:
    """What one round read: per queue its depth and how many of it are due, the watches per
    status, the upstream pause left (ms), Redis' used and max memory (bytes); and the first
    of the worker's notes that Redis refused (full, a replica), if any: the reads were made
    all the same."""

    queues: dict[str, tuple[int, int]]
    watches: dict[str, int]
    pause_left_ms: int
    memory_used: int
    memory_max: int
    refused: Exception | None


async def worker_round(redis: Redis, lease_s: float, keys_held: str) -> WorkerRound:
    """Say the worker's lease and keys, and read its gauges, in one round trip. Raises what
    a read met (Redis away or answering with an error); a refused note does not raise."""
    lease = str(int(lease_s * 1000))
    # (said for 10 minutes, or the lease if longer: a stalled loop's claims stay covered)
    said_for = max(c.WORKER_LEASE_SEEN_MS, int(lease_s * 1000))
    pipe = redis.pipeline(transaction=False)
    now = clock.now_ms()
    pipe.hset(c.WORKER_LEASES_KEY, lease, str(now + said_for))
    # (a shorter lease's worker never cuts a longer one's time: NX sets a new key's, GT
    # only lengthens it -- GT alone never sets one on a key without; not a transaction,
    # needlessly: a TTL lost between the two, by a crash, is set again by the NX 5 s later)
    pipe.pexpire(c.WORKER_LEASES_KEY, said_for, nx=True)
    pipe.pexpire(c.WORKER_LEASES_KEY, said_for, gt=True)
    say_keys(pipe, keys_held, now)
    writes = len(pipe)
    for _, key in QUEUES:
        pipe.zcard(key)
        pipe.zcount(key, "-inf", now)  # (due: a claim's score is its lease's end)
    pipe.hgetall(c.WATCH_COUNTS_KEY)
    pipe.get(c.UPSTREAM_PAUSE_KEY)  # the pause's end, Redis ms
    pipe.info("memory")  # (~1 KB of text every 5 s: nothing beside the deliveries)
    pipe.time()
    sent = clock.local_ms()
    # (a write refused -- Redis full, a replica -- leaves the reads to be done: before, every
    # gauge froze at its value of before, and the memory gauges showed a full Redis as 57 %
    # used while it refused writes; a tester's run, 2026-12-07)
    results = await pipe.execute(raise_on_error=False)
    for r in results[writes:]:
        if isinstance(r, Exception):
            raise r
    refused = next((r for r in results[:writes] if isinstance(r, Exception)), None)
    *sizes, counts, pause_end, memory, (secs, micros) = results[writes:]
    now = int(secs) * 1000 + int(micros) // 1000
    clock.observe(now, sent, clock.local_ms())  # (Redis' clock: learnt again)
    return WorkerRound(
        queues={
            name: (int(depth), int(due))
            for (name, _), depth, due in zip(QUEUES, sizes[::2], sizes[1::2], strict=True)
        },
        watches=counts_of(counts),
        pause_left_ms=max(0, int(pause_end or 0) - now),
        memory_used=int(memory.get("used_memory", 0)),
        memory_max=int(memory.get("maxmemory", 0)),
        refused=refused,
    )


async def say_keys_held(redis: Redis, keys_held: str) -> None:
    """Say which ``RELAY_SECRETS_KEY`` keys this process holds (the API's note; the worker
    says it in :func:`worker_round`)."""
    async with redis.pipeline(transaction=False) as pipe:
        say_keys(pipe, keys_held, clock.now_ms())
        await pipe.execute()
