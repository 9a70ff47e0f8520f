"""arq jobs: durable, deduplicated, deferred work.

The hot paths (polls, deliveries) are batched pumps; arq holds what is rare and must not be
lost: each watch's expiry timer, written by the API in the same transaction as the watch.
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
    created = await store.deliveries.expire(watch_id, now_ms())
    if created:
        log.info("watch expired", watch_id=watch_id)
    return created
