"""A ``DELETE`` answered 204 means no attempt starts afterwards, queued or not: the worker
checks that each claim still holds right before its attempt (the claim gate)."""

from __future__ import annotations

import asyncio
import time

from tests.chaos.harness import AUTH, Stack, wait_until

COMPLETED = [{"status": "completed", "after": 0}]
WATCHES = 60
DELAY_S = 0.4  # the receiver's answer time: 4 lanes take about 6 s for the fan-out
ON_THE_WIRE_S = 0.15  # a request whose check passed just before the 204 may still arrive


async def test_no_attempt_starts_after_delete(stack: Stack) -> None:
    """60 watches on one video, a slow receiver, 4 lanes (16 claims queued ahead of them):
    half the watches are deleted during the fan-out; the receiver gets no request for a
    deleted watch later than its DELETE's 204 (beyond what was already on the wire), and
    the others are all delivered.
    Fails before issue 14: claimed jobs waiting in the worker's queue were sent anyway,
    up to ~1.5 s after their DELETE answered."""
    await stack.start_api()
    await stack.start_worker("w", RELAY_DELIVERY_CONCURRENCY="4", RELAY_LEASE="10")
    vid = await stack.video(timeline=COMPLETED)
    stack.receiver.script("/slow", [204] * WATCHES, delay=DELAY_S)
    ids = [r.id for r in await stack.register([vid] * WATCHES, path="/slow")]
    await wait_until(lambda: stack.has_received(ids, 4), 15, interval=0.01, what="fan-out")
    started = {e.event["data"]["watchId"] for e in stack.receiver.events}
    doomed = [w for w in ids if w not in started][::2][: WATCHES // 2]
    answered: dict[str, float] = {}

    async def delete(wid: str) -> None:
        async with stack.http.delete(f"{stack.api()}/v1/watches/{wid}", headers=AUTH) as r:
            assert r.status == 204, await r.text()
            answered[wid] = time.time()

    await asyncio.gather(*(delete(w) for w in doomed))
    kept = [w for w in ids if w not in set(doomed)]
    await stack.wait_final(kept, 30)
    await stack.quiesce()
    late = [
        (e.event["data"]["watchId"], round(e.received_at - answered[e.event["data"]["watchId"]], 3))
        for e in stack.receiver.events
        if e.event["data"]["watchId"] in answered
        and e.received_at > answered[e.event["data"]["watchId"]] + ON_THE_WIRE_S
    ]
    assert not late, f"{len(late)} of {len(doomed)} deleted watches sent after the 204: {late}"
    tally = stack.tally(kept)
    assert tally.lost == 0 and tally.duplicates == 0
    st = await stack.statuses(doomed)
    assert all(s == "cancelled" for s in st.values()), st
