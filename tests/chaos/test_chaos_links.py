"""Fresh links, the chaos angle: an attempt made more than RELAY_LINK_REFRESH after the clips
were fetched fetches them again first -- also when the worker dies during that fetch, and
without holding the batch past its lease when the upstream is slow."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

from relay import constants as c
from relay.devtools.embedded_redis import free_port
from tests.chaos.harness import Stack, report, wait_until

COMPLETED = [{"status": "completed", "after": 0}]


def expiry(url: str) -> int:
    """The ``expires`` of a signed simulator link."""
    return int(parse_qs(urlsplit(url).query)["expires"][0])


async def all_due(stack: Stack, watch_ids: list[str]) -> bool:
    """Whether every watch's next delivery attempt is due now."""
    now = time.time() * 1000
    for wid in watch_ids:
        score = await stack.db.zscore(c.DELIVERY_SCHEDULE_KEY, wid)
        if score is None or score > now:
            return False
    return True


async def backlog(stack: Stack, worker: str, watch_ids: list[str]) -> None:
    """Stop *worker* (SIGTERM) and wait until every watch's retry is due: the next worker
    finds them all at once, as after an outage."""
    code, _ = await stack.terminate(worker, timeout=10)
    assert code == 0
    await wait_until(lambda: all_due(stack, watch_ids), 10, what="retries due")


async def all_leased(stack: Stack, watch_ids: list[str], beyond_s: float) -> bool:
    """Whether every watch's delivery is claimed with a lease ending beyond now + *beyond_s*."""
    horizon = (time.time() + beyond_s) * 1000
    for wid in watch_ids:
        score = await stack.db.zscore(c.DELIVERY_SCHEDULE_KEY, wid)
        if score is None or score <= horizon:
            return False
    return True


async def test_links_fresh_after_kill_during_refresh(stack: Stack) -> None:
    """Links live 4 s, RELAY_LINK_REFRESH=1.5 s: the first attempts fail; a worker picks up
    the retries, due together, and is SIGKILLed while it re-fetches the clips (slow upstream);
    the next worker delivers links that work when they arrive."""
    await stack.start_sim(free_port(), url_ttl=4)
    env = {"RELAY_LINK_REFRESH": "1.5", "RELAY_RETRY_SCHEDULE": "1.5,0.5", "RELAY_LEASE": "4"}
    await stack.start_api()
    await stack.start_worker("w", **env)
    vid = await stack.video(timeline=COMPLETED)
    stack.receiver.script("/fresh", [500] * 10)
    regs = await stack.register([vid] * 10, path="/fresh")
    ids = [r.id for r in regs]
    await wait_until(lambda: stack.has_received(ids, 10), 10, what="first attempts")
    first = {e.event["data"]["watchId"]: e for e in stack.receiver.events}
    await backlog(stack, "w", ids)
    await stack.fault("slow", path="clips", videoId=vid, delay=1.5, times=1)
    await stack.start_worker("w", **env)
    # the retries are claimed together and their clips refresh hangs: kill now
    await wait_until(lambda: all_leased(stack, ids, 3.2), 10, interval=0.01, what="refresh")
    killed_at = stack.kill("w")
    await stack.start_worker("w", **env)
    done = await stack.wait_final(ids, 20)
    await stack.quiesce()
    tally = stack.tally(ids)
    assert tally.lost == 0 and not tally.multi_id_watches()
    final = {e.event["data"]["watchId"]: e for e in stack.receiver.events if e.status == 204}
    for wid in ids:
        got, old = final[wid], first[wid]
        urls = [clip["downloadUrl"] for clip in got.event["data"]["clips"]]
        old_urls = [clip["downloadUrl"] for clip in old.event["data"]["clips"]]
        assert urls and len(urls) == len(old_urls)
        assert all(expiry(u) > got.received_at + 1 for u in urls), "links dead on arrival"
        assert all(expiry(u) <= got.received_at for u in old_urls), "no refresh was needed?"
    sample = final[ids[0]].event["data"]["clips"][0]["downloadUrl"]
    async with stack.http.get(sample) as resp:
        assert resp.status == 200, f"fresh link refused: {resp.status}"
    assert "clip links refreshed" in stack.procs["w"].log_text()
    report(
        "kill -9 mid link refresh",
        due=len(ids),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=done - killed_at,
    )


class LeaseOverrunError(AssertionError):
    """A claimed batch outlived its lease and its deliveries went out twice."""


async def test_slow_link_refresh_stays_within_the_lease(stack: Stack) -> None:
    """8 retries due together (the worker was stopped a moment) whose links are stale, on
    4 videos; the upstream answers /clips after 1.2 s (its timeout is 2 s, the lease 3 s):
    each event still goes out once."""
    env = {"RELAY_LINK_REFRESH": "1", "RELAY_RETRY_SCHEDULE": "1.5,0.5"}
    await stack.start_api()
    await stack.start_worker("w", **env)
    vids = await stack.videos(4, timeline=COMPLETED)
    stack.receiver.script("/r", [500] * 8)
    regs = await stack.register(vids * 2, path="/r")
    ids = [r.id for r in regs]
    await wait_until(lambda: stack.has_received(ids, 8), 10, what="first attempts")
    await backlog(stack, "w", ids)
    for vid in vids:
        await stack.fault("slow", path="clips", videoId=vid, delay=1.2, times=1)
    started = time.time()
    await stack.start_worker("w", **env)
    done = await stack.wait_final(ids, 30)
    await stack.quiesce()
    tally = stack.tally(ids)
    first_failed = len(ids)  # the scripted 500s are not delivered copies
    report(
        "slow link refresh",
        due=len(ids),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=done - started,
        receipts=sum(tally.hits_by_id.values()) - first_failed,
    )
    assert tally.lost == 0
    if tally.duplicates:
        raise LeaseOverrunError(f"{tally.duplicates} events delivered twice without a crash")
