"""Leases extended while the work is alive: a link refresh that takes longer than the lease
(it waits for the shared upstream budget) keeps its batch's claims, so an idle second worker
takes none of them over and fetches nothing again."""

from __future__ import annotations

import time

from tests.chaos.harness import Stack, wait_until
from tests.chaos.test_chaos_links import backlog

COMPLETED = [{"status": "completed", "after": 0}]
VIDEOS = 8
ENV = {"RELAY_LINK_REFRESH": "1", "RELAY_RETRY_SCHEDULE": "1.5,0.5", "RELAY_LEASE": "3"}


async def test_long_link_refresh_keeps_its_claims(stack: Stack) -> None:
    """8 retries due together whose links are stale, one per video; the workers that take
    them up may ask the upstream once a second (RELAY_UPSTREAM_RPS=1), so the refresh of
    the 8 clips documents takes ~7 s, more than twice the 3 s lease. The claiming worker
    extends its claims while it waits: a second worker, idle, takes none over -- one clips
    request per video, one 2xx per event.
    Fails before issue 14: the claims were extended only after the refresh, by then lost;
    the two workers took the batch over from each other, each refresh outlasting its lease,
    and no attempt was made in 40 s (every watch still ``delivering``)."""
    await stack.start_api()
    await stack.start_worker("w", **ENV)
    vids = await stack.videos(VIDEOS, timeline=COMPLETED)
    stack.receiver.script("/r", [500] * VIDEOS)
    ids = [r.id for r in await stack.register(vids, path="/r")]
    await wait_until(lambda: stack.has_received(ids, VIDEOS), 15, what="first attempts")
    await backlog(stack, "w", ids)
    restarted = time.time()
    slow = {**ENV, "RELAY_UPSTREAM_RPS": "1"}
    await stack.start_worker("w1", **slow)
    await stack.start_worker("w2", **slow)
    await stack.wait_final(ids, 40)
    await stack.quiesce()
    clips = [e for e in await stack.sim_log(restarted) if e[1] == "clips" and e[2] in set(vids)]
    per_video = {v: sum(1 for e in clips if e[2] == v) for v in vids}
    assert all(n == 1 for n in per_video.values()), f"clips fetched again: {per_video}"
    tally = stack.tally(ids)
    assert tally.lost == 0 and tally.duplicates == 0
