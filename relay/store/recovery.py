"""Bulk recovery of failed watches and the record of a ``watch.ping`` attempt.

``recover`` reads a tenant's index of failed watches by the time each became failed
(``cr:t:<tenant>:s:failed``, written by ``settle.lua``) in batches of
:data:`RECOVER_BATCH`: the batch's ids and registrations (their callbacks' origins, whose
circuits are closed first), then one ``recover.lua`` call: no scan of the keyspace, bounded
work per call. Each batch takes what it read out of the index, so two recovers running at once
never put the same watch back twice (docs/architecture.md, "Recovery and ping").
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.typing import EncodableT

from relay import constants as c
from relay.domain.clock import now_ms
from relay.domain.origin import url_origin_tag
from relay.store.codec import watch_from_registration

# index entries per recover.lua call: about 2 ms of Redis each (1,000 held it ~9 ms, which
# every other request waited behind; bench/recover.py)
RECOVER_BATCH = 200
# seconds of calls one request makes at most (well inside the API's 5 s deadline): a range
# of millions of failed watches is put back over several requests, each saying how many
RECOVER_BUDGET_S = 2.0


async def recover(
    script: AsyncScript,
    redis: Redis,
    close_circuits: Callable[[Iterable[str]], Awaitable[None]],
    tenant: str,
    since_ms: int,
    until_ms: int,
    batch: int | None = None,
    budget_s: float | None = None,
) -> tuple[int, bool]:
    """Put back the watches of *tenant* that became failed in [since_ms, until_ms), for up
    to *budget_s* seconds; the number put back, and whether the range may hold more (a
    next call goes on: those put back have left the index). *batch* and *budget_s*
    default to :data:`RECOVER_BATCH` and :data:`RECOVER_BUDGET_S`.

    Before each batch is put back, *close_circuits* is given the origin tags of its
    watches' callbacks (the workers close them, so the attempts asked for are sent, not
    refused by a circuit the outage opened): only this tenant's origins, never another
    tenant's dead one."""
    started = time.monotonic()
    batch = RECOVER_BATCH if batch is None else batch
    budget_s = RECOVER_BUDGET_S if budget_s is None else budget_s
    failed = c.TENANT_FINAL_KEY.format(tenant, "failed")
    keys = [failed, c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY, c.TENANT_COUNTS_KEY.format(tenant)]
    total = 0
    while True:
        ids = await redis.zrangebyscore(failed, since_ms, f"({until_ms}", start=0, num=batch)
        if ids:
            regs = await redis.mget([c.REGISTRATION_KEY.format(w) for w in ids])
            await close_circuits(
                url_origin_tag(watch_from_registration(w, r).callback_url)
                for w, r in zip(ids, regs, strict=True)
                if r
            )
            moved = await script(
                keys=keys, args=[since_ms, until_ms, now_ms(), c.WATCH_PREFIX, *ids]
            )
            total += int(moved)
        if len(ids) < batch:
            return total, False
        if time.monotonic() - started >= budget_s:
            return total, True


async def record_ping(
    script: AsyncScript, watch_id: str, record: bytes, tenant: str | None = None, ok: bool = False
) -> int | None:
    """Append *record* to the watch's attempt records (its next number), and with *tenant*
    count it (*ok*: a 2xx) in the dashboard's attempts of this minute; None: no watch."""
    keys = [c.WATCH_KEY.format(watch_id)]
    args: list[EncodableT] = [record, c.MAX_ATTEMPTS_KEPT]
    if tenant is not None:
        keys.append(c.TENANT_MINUTE_KEY.format(tenant, now_ms() // 60_000))
        args += ["ok" if ok else "fail", c.ATTEMPT_MINUTES_TTL]
    seq = await script(keys=keys, args=args)
    return int(seq) if seq else None
