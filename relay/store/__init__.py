"""The relay's state in Redis: one :class:`Store` composing a part per aggregate.

The API and the worker share this package; nothing else touches Redis keys (their layout is
in :mod:`relay.constants`). Every transition that other replicas may race with runs as one
Lua script (``commands/<name>.lua``, loaded by :mod:`relay.store.scripts`).

Layout (docs/architecture.md, "Redis data model"): a watch is two keys (its registration,
and a small hash of its state, secrets and attempt records); a video being watched is a hash
plus a hash of the watches still waiting on it; a fan-out's clips are one document shared
by its events; three sorted sets schedule the work -- video ids by next poll time, watch
ids by next delivery attempt and by expiry. A claimed member's score is pushed to a lease
deadline, so work held by a worker that dies becomes due again by itself.

- ``store.watches`` (:mod:`relay.store.watches`): register, read, list, cancel, redeliver,
  rotate secrets, attempt records, counts per status;
- ``store.videos`` (:mod:`relay.store.videos`): the poll schedule and each video's state;
- ``store.deliveries`` (:mod:`relay.store.deliveries`): final events, the delivery schedule
  and its claims, attempt outcomes;
- ``store.limits`` (:mod:`relay.store.limits`): the upstream budget and its pause, the API
  rate counters, Redis' memory, the workers' leases;
- ``store.retention`` (:mod:`relay.store.retention`): deleting watches final for longer than
  RELAY_RETENTION, with everything they own;
- ``store.circuits`` (:mod:`relay.store.feeds`): the circuit closes an operator's redeliver
  or recover asks of every worker.
"""

from __future__ import annotations

from redis.asyncio import Redis

from relay.store.deliveries import SETTLE_BATCH, Deliveries
from relay.store.feeds import Circuits
from relay.store.limits import Limits
from relay.store.retention import Retention
from relay.store.scripts import DELIVERY_BATCH, SCRIPT_BATCH
from relay.store.videos import Videos
from relay.store.watches import EXPIRE_JOB, Watches

__all__ = [
    "DELIVERY_BATCH",
    "EXPIRE_JOB",
    "SCRIPT_BATCH",
    "SETTLE_BATCH",
    "Circuits",
    "Deliveries",
    "Limits",
    "Retention",
    "Store",
    "Videos",
    "Watches",
]


class Store:
    """Redis access for the relay, one part per aggregate on one connection. One instance
    per process, shared by all tasks."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.circuits = Circuits(redis)
        self.watches = Watches(redis, self.circuits)
        self.deliveries = Deliveries(redis)
        self.videos = Videos(redis, self.deliveries)
        self.limits = Limits(redis)
        self.retention = Retention(redis)

    async def next_due_ms(self, schedule: str) -> int | None:
        """Score of the earliest member of *schedule* (the poll or the delivery schedule),
        or None when it is empty."""
        rows = await self.redis.zrange(schedule, 0, 0, withscores=True)
        return int(rows[0][1]) if rows else None
