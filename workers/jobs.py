"""arq jobs: what a previous version queued in arq.

Polls, deliveries and expiries are batched pumps on schedules of their own (an expiry was an
arq job until the expiry schedule, :mod:`workers.expirer`). The function stays registered
so that such a job, left in arq's queue, ends quietly (it finds no watch it could expire)
instead of failing as an unknown function.
"""

from __future__ import annotations

from typing import Any

from relay import logs
from relay.domain.clock import now_ms
from relay.store import Store

log = logs.get("workers.jobs")
STORE = "store"  # ctx key


async def expire_watch(ctx: dict[str, Any], watch_id: str) -> bool:
    """``watch.expired`` for a watch whose video never finished (RELAY_WATCH_TIMEOUT).

    Idempotent: a watch that already has its final event, or was cancelled, is left alone.
    """
    store: Store = ctx[STORE]
    created = await store.deliveries.expire(watch_id, now_ms()) > 0
    if created:
        log.info("watch expired", watch_id=watch_id)
    return created
