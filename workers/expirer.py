"""The expirer: gives a watch whose video never finished its ``watch.expired``.

A watch is a member of the expiry schedule (watch id -> RELAY_WATCH_TIMEOUT after it was
registered) while it waits on its video; its event or its cancellation takes it off. Due
members are claimed with a lease like any pump's, so a worker that dies mid-way loses
nothing: the member is due again after the lease.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from relay import constants as c
from relay import logs
from relay.domain.clock import now_ms
from relay.store import Store
from workers.pump import Pump

log = logs.get("workers.expirer")


class Expirer(Pump[str]):
    """Claims due expiries and gives those watches their ``watch.expired``."""

    schedule = c.EXPIRY_SCHEDULE_KEY
    name = "expirer"

    def __init__(self, store: Store, *, lease_s: float) -> None:
        super().__init__(store, concurrency=64, lease_s=lease_s, batch=64, idle_s=0.5)

    async def claim(self, limit: int) -> Sequence[str]:
        return await self.store.deliveries.claim_expiries(limit=limit, lease_s=self.lease_s)

    async def work(self, items: Sequence[str], release: Callable[[], None]) -> None:
        """Expire each watch (its event takes it off the schedule); a watch that has its
        event already, or is gone, just leaves the schedule."""
        done: list[str] = []
        for watch_id in items:
            if await self.store.deliveries.expire(watch_id, now_ms()):
                log.info("watch expired", watch_id=watch_id)
            else:
                done.append(watch_id)
            release()
        await self.store.deliveries.unschedule_expiries(done)
