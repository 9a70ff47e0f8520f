"""Bulk recovery of failed watches.

``recover`` reads a tenant's index of failed watches by the time each became failed
(``cr:t:<tenant>:s:failed``, written by ``settle.lua``) in batches of
:data:`RECOVER_BATCH`: ``read_failed.lua`` reads a batch's ids and registrations (their
callbacks' origins, whose circuits are closed first), then one ``recover.lua`` call puts it
back (two round trips a batch: the pipeline of the batch's close and put back and the next
batch's read, and redis-py's ``SCRIPT EXISTS`` before it): no scan of the keyspace, bounded
work per call. Each batch takes what it read out of the index, so two recovers running at
once never put the same watch back twice (docs/architecture.md, "Recovery and ping").
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from redis.commands.core import AsyncScript
from redis.typing import EncodableT

from relay import constants as c
from relay.domain.clock import now_ms
from relay.domain.origin import url_origin_tag
from relay.store.feeds import Circuits

# index entries per recover.lua call: about 2 ms of Redis each (1,000 held it ~9 ms, which
# every other request waited behind; bench/recover.py)
RECOVER_BATCH = 200
# seconds of calls one request makes at most (well inside the API's 5 s deadline): a range
# of millions of failed watches is put back over several requests, each saying how many
RECOVER_BUDGET_S = 2.0


@dataclass(frozen=True)
class RecoverScripts:
    """The scripts of a recover: ``read_failed.lua`` (a batch of the index, with the
    registrations) and ``recover.lua`` (putting a batch back)."""

    read: AsyncScript
    recover: AsyncScript


async def recover(
    scripts: RecoverScripts,
    circuits: Circuits,
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

    Before each batch is put back, the workers are asked to close the circuits of its
    watches' callbacks' origins (so the attempts asked for are sent, not refused by a
    circuit the outage opened): only this tenant's origins, never another tenant's dead
    one (each origin once a call). Two round trips a batch: its close, its ``recover.lua``
    and the next batch's read go in one pipeline (redis-py asks ``SCRIPT EXISTS`` first)."""
    started = time.monotonic()
    batch = RECOVER_BATCH if batch is None else batch
    budget_s = RECOVER_BUDGET_S if budget_s is None else budget_s
    failed = c.TENANT_FINAL_KEY.format(tenant, "failed")
    keys = [failed, c.DELIVERY_SCHEDULE_KEY, c.WATCH_COUNTS_KEY, c.TENANT_COUNTS_KEY.format(tenant)]
    reading: list[EncodableT] = [since_ms, until_ms, batch, c.WATCH_PREFIX, c.REGISTRATION_SUFFIX]
    ids, regs = await scripts.read(keys=[failed], args=reading)
    total = 0
    closed: set[str] = set()  # (each origin's close once a call, not once a batch)
    while ids:
        more = len(ids) == batch and time.monotonic() - started < budget_s
        pipe = circuits.redis.pipeline(transaction=False)
        tags = {
            url_origin_tag(orjson.loads(r)["callbackUrl"])
            for r in regs
            if r  # (a registration gone: nothing to put back)
        }
        await circuits.close(tags - closed, pipe)
        closed |= tags
        await scripts.recover(
            keys=keys, args=[since_ms, until_ms, now_ms(), c.WATCH_PREFIX, *ids], client=pipe
        )
        if more:
            await scripts.read(keys=[failed], args=reading, client=pipe)
        replies = await pipe.execute()
        total += int(replies[-2] if more else replies[-1])
        if not more:
            return total, len(ids) == batch
        ids, regs = replies[-1]
    return total, False
