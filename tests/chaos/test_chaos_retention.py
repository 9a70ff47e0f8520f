"""Retention end to end (issue 14, RELAY_RETENTION): API and worker processes, the upstream
simulator and a receiver. Watches final for longer than the retention are deleted by the
worker's sweeper -- ``GET`` answers 404 and the list leaves them out -- while a watch still
retrying stays; once the last watch ages out Redis is back to the keys it had before (no
key is left behind, the poll state of a video whose only watch was cancelled included).
Fails before issue 14: nothing was ever deleted."""

from __future__ import annotations

import re
import time
from typing import Any

from relay import constants as c
from tests.chaos.harness import AUTH, Stack, report, wait_until

COMPLETED = [{"status": "completed", "after": 0}]
PROCESSING = [{"status": "processing", "after": 0}]
# keys that are not the watches' and lapse by themselves (rate counters, arq's health key,
# the sweep lock, the shared upstream budget and its pause)
EPHEMERAL = (c.RATE_LIMIT_KEY.split("{")[0], c.UPSTREAM_RATE_KEY.split("{")[0], c.ARQ_HEALTH_KEY)
EPHEMERAL += (c.SWEEP_LOCK_KEY, c.UPSTREAM_PAUSE_KEY)
# the dashboard's attempts per tenant per minute: one key per minute, so which ones exist
# depends on when the test runs; each must lapse by itself
MINUTE = re.compile(re.escape(c.TENANT_MINUTE_KEY).replace(r"\{\}", "[^:]+") + "$")
ENV = {"RELAY_RETENTION": "2", "RELAY_RETRY_SCHEDULE": "600,600"}


async def keys(stack: Stack) -> set[str]:
    """Every key but the ephemeral ones (a per-minute count must carry its TTL)."""
    found: set[str] = set()
    async for key in stack.db.scan_iter("*"):
        if MINUTE.match(key):
            assert await stack.db.ttl(key) > 0, f"{key} never lapses"
        elif not key.startswith(EPHEMERAL):
            found.add(key)
    return found


async def listed(stack: Stack) -> set[str]:
    """The ids ``GET /v1/watches`` lists (every page)."""
    ids: set[str] = set()
    url = f"{stack.api()}/v1/watches?limit=100"
    cursor: str | None = ""
    while cursor is not None:
        async with stack.http.get(url + (f"&cursor={cursor}" if cursor else ""), headers=AUTH) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
        ids.update(w["id"] for w in body["data"])
        cursor = body.get("nextCursor")
    return ids


async def gone(stack: Stack, watch_ids: list[str]) -> bool:
    """Whether every watch answers 404."""
    for wid in watch_ids:
        status, _ = await stack.get_watch(wid)
        if status != 404:
            return False
    return True


async def test_final_watches_age_out_and_redis_returns_to_its_baseline(stack: Stack) -> None:
    """RELAY_RETENTION=2: delivered watches (three sharing one clips document) and a watch
    cancelled while its video was still processing (its only watch) are 404 and unlisted a
    few seconds after 2 s; a watch whose receiver answers 500 (next retry in 10 minutes) is
    still there, delivering. Once it is cancelled too and has aged out, Redis holds the
    same keys as after the warm-up, the cancelled watch's video is no longer polled (this
    part held before issue 14 too: the poller releases a video nobody waits on), and the
    worker's relay_watches_purged_total counts each watch once."""
    await stack.start_api()
    await stack.start_worker("w", **ENV)
    # warm-up: one watch through its whole life, so the tenant's own keys exist
    (warm,) = await stack.register([await stack.video(timeline=COMPLETED)])
    await stack.wait_final([warm.id], 20)
    await wait_until(lambda: gone(stack, [warm.id]), 20, what="warm-up watch purged")
    baseline = await keys(stack)

    done_vid = await stack.video(timeline=COMPLETED)
    waiting_vid = await stack.video(timeline=PROCESSING)
    busy_vid = await stack.video(timeline=COMPLETED)
    stack.receiver.script("/busy", [500] * 50)
    delivered = [r.id for r in await stack.register([done_vid] * 3)]
    (cancelled,) = [r.id for r in await stack.register([waiting_vid])]
    (busy,) = [r.id for r in await stack.register([busy_vid], path="/busy")]
    await stack.wait_final(delivered, 20)
    async with stack.http.delete(f"{stack.api()}/v1/watches/{cancelled}", headers=AUTH) as r:
        assert r.status == 204
    await wait_until(lambda: stack.attempts(busy), 20, what="the busy watch's first attempt")
    final_at = time.time()
    assert {*delivered, cancelled, busy} <= await listed(stack)

    await wait_until(lambda: gone(stack, [*delivered, cancelled]), 20, what="final watches gone")
    aged = time.time() - final_at
    assert not {*delivered, cancelled} & await listed(stack)
    status, body = await stack.get_watch(busy)
    assert status == 200 and body["status"] == "delivering", body
    assert busy in await listed(stack)
    assert not await stack.db.zscore(c.POLL_SCHEDULE_KEY, waiting_vid)
    assert not await stack.db.exists(c.VIDEO_KEY.format(waiting_vid))
    released_at = time.time()

    async with stack.http.delete(f"{stack.api()}/v1/watches/{busy}", headers=AUTH) as r:
        assert r.status == 204
    await wait_until(lambda: gone(stack, [busy]), 20, what="the last watch gone")
    left = await keys(stack)
    assert left == baseline, f"left: {sorted(left - baseline)}; missing: {baseline - left}"
    ids = [warm.id, *delivered, cancelled, busy]
    async for key in stack.db.scan_iter("*"):
        assert not any(w in key for w in ids), key
    assert not [row for row in await stack.sim_log(released_at) if row[2] == waiting_vid]
    counts = await stack.db.hgetall(c.WATCH_COUNTS_KEY)  # type: ignore[misc]
    assert {int(v) for v in counts.values()} == {0}, counts
    metrics = f"http://127.0.0.1:{stack.metrics_ports['w']}/metrics"
    async with stack.http.get(metrics) as r:
        text = await r.text()
    purged = [line for line in text.splitlines() if line.startswith("relay_watches_purged_total ")]
    assert purged and float(purged[0].split()[1]) == len(ids), purged
    tally = stack.tally(delivered)
    report(
        "retention",
        due=len(delivered),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=None,
        purged_after_s=aged,
        keys=len(left),
    )
