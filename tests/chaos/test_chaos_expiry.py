"""Expiry through a Redis that hangs: the expirer (a pump over the expiry schedule, with
leases) ends with every watch past its deadline expired, its ``watch.expired`` delivered
exactly once, even when Redis freezes (SIGSTOP) while the timers fire."""

from __future__ import annotations

import asyncio
import time

from tests.chaos.harness import Stack, report, wait_until

TIMEOUT_S = 6.0  # RELAY_WATCH_TIMEOUT here
FREEZE_S = 8.0  # (over twice the lease and the Redis socket timeout, 3 s each)


async def test_redis_frozen_while_expiry_timers_fire_every_watch_expires_once(
    stack: Stack,
) -> None:
    """240 watches of videos that never finish, registered over ~2 s with a 6 s watch
    timeout; Redis is frozen for 8 s from just after the first timers are due (some
    expiries mid-way, the rest due during the freeze), then SIGCONT: every watch gets its
    ``watch.expired`` (and is final: ``delivered``), and the receiver gets it exactly once
    (one event id, one 2xx). Passes before issue 14 too: the expirer was already a pump
    with leases (a claim or an expiry that fails comes back after its lease); this pins it.
    """
    env = {"RELAY_WATCH_TIMEOUT": str(TIMEOUT_S)}
    await stack.start_api(**env)
    await stack.start_worker(**env)
    await stack.start_worker("worker2", **env)
    vids = await stack.videos(40, timeline=[{"status": "analyzing", "progress": 10, "after": 0}])
    started = time.time()
    regs = []
    for wave in range(4):  # deadlines spread over ~2 s
        regs += await stack.register([v for v in vids for _ in range(wave, 6, 4)])
        await asyncio.sleep(0.6)
    registered_s = time.time() - started
    ids = [r.id for r in regs]
    await asyncio.sleep(max(started + TIMEOUT_S + 0.4 - time.time(), 0))
    waiting = sum(s == "watching" for s in (await stack.statuses(ids)).values())
    stack.redis.freeze()
    try:
        await asyncio.sleep(FREEZE_S)
    finally:
        stack.redis.thaw()
    thawed = time.monotonic()
    assert waiting >= 100, f"only {waiting} timers fired during the freeze"
    await stack.wait_final(ids, 60)
    final_s = time.monotonic() - thawed
    await wait_until(
        lambda: stack.has_received(ids, len(ids)), 30, what="every watch.expired delivered"
    )
    await stack.quiesce()
    statuses = await stack.statuses(ids)
    tally = stack.tally(ids)
    types = {ev.event.get("type") for ev in stack.receiver.events}
    report(
        "redis frozen 8 s while expiry timers fire",
        due=len(ids),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=round(final_s, 1),
        registered_s=round(registered_s, 1),
        due_in_freeze=waiting,
    )
    assert set(statuses.values()) == {"delivered"}, statuses  # (lastEventType watch.expired)
    assert types == {"watch.expired"}, types
    assert tally.lost == 0 and tally.duplicates == 0
    assert not tally.multi_id_watches(), tally.multi_id_watches()
