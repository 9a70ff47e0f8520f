"""Receivers misbehaving: retries with +-20 % jitter, Retry-After on 429/503 (capped at 1 h),
410 disables, 3xx / timeouts / refused connections are retried, every attempt is recorded;
a schedule longer than arq's 1-day job expiry runs to its end; redelivery of delivered,
failed and disabled watches."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import orjson
from aiohttp import web

from relay import constants as c
from relay.devtools.embedded_redis import free_port
from tests.chaos.harness import Registered, Special, Stack, report, wait_until

COMPLETED = [{"status": "completed", "after": 0}]
ARQ_DAY_S = 86_400  # arq keeps a job's data one day past its due time (its `expires`)
SLACK = 0.5  # claim, flush and loop latency an attempt may start late by (busy machine)
CLOCK_PLAY_S = 0.05  # how far two attempt times may err between them (clock offset re-learnt)


def at_s(record: dict[str, Any]) -> float:
    """An attempt record's ``at`` as Unix seconds."""
    return datetime.fromisoformat(record["at"].replace("Z", "+00:00")).timestamp()


def gaps(records: list[dict[str, Any]]) -> list[float]:
    """Seconds between consecutive attempts."""
    times = [at_s(r) for r in records]
    return [b - a for a, b in itertools.pairwise(times)]


def per_event(*answers: Callable[[], web.StreamResponse], delay: float = 0.0) -> Special:
    """A receiver route answering the n-th POST of each webhook-id with ``answers[n]``
    (after *delay* seconds), and 204 once they are used up."""
    seen: Counter[str] = Counter()

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        n = seen[request.headers.get("webhook-id", "")]
        seen[request.headers.get("webhook-id", "")] += 1
        if delay:
            await asyncio.sleep(delay)
        return answers[n]() if n < len(answers) else web.Response(status=204)

    return handler


async def wait_attempts(stack: Stack, regs: list[Registered], n: int, timeout: float) -> None:
    """Until each watch has at least *n* recorded attempts."""

    async def enough() -> bool:
        return all([await stack.attempts(r.id) >= n for r in regs])

    await wait_until(enough, timeout, interval=0.1, what=f"{n} attempts each")


async def test_receiver_answers(stack: Stack) -> None:
    """One worker, RELAY_RETRY_SCHEDULE=1.5,172800 (the second gap: two days), delivery
    timeout 1 s; one group of watches per receiver behaviour."""
    schedule = (1.5, 172800.0)
    await stack.start_api()
    await stack.start_worker(
        RELAY_RETRY_SCHEDULE=",".join(f"{s:g}" for s in schedule),
        RELAY_DELIVERY_TIMEOUT="1",
    )
    long_body = "x" * 3000
    refused_port = free_port()
    rcv = stack.receiver
    rcv.script("/jitter", [500] * 40)
    rcv.script("/ra429", [429] * 3, retry_after=4)
    rcv.script("/ra503", [503] * 3, retry_after=4)
    rcv.script("/racap", [429], retry_after=7200)
    rcv.script("/gone", [410] * 2)
    rcv.script("/slow", [204] * 2, delay=1.6)
    rcv.script("/twodays", [500] * 2)

    def redirect(code: int) -> Callable[[], web.StreamResponse]:
        target = {"Location": f"{stack.receiver_url}/target"}
        return lambda: web.Response(status=code, headers=target)

    for code in (301, 302, 307, 308):
        stack.special[f"/moved{code}"] = per_event(redirect(code))
    stack.special["/big"] = per_event(lambda: web.Response(status=500, text=long_body), delay=0.3)
    stack.special["/target"] = per_event()  # where the redirects point: must see nothing

    vids = await stack.videos(70, timeline=COMPLETED)
    take = iter(vids)

    async def group(n: int, path: str, base: str | None = None) -> list[Registered]:
        return await stack.register([next(take) for _ in range(n)], path=path, base=base)

    jitter = await group(40, "/jitter")
    ra = await group(3, "/ra429") + await group(3, "/ra503")
    racap = await group(1, "/racap")
    gone = await group(2, "/gone")
    moved = [r for code in (301, 302, 307, 308) for r in await group(1, f"/moved{code}")]
    slow = await group(2, "/slow")
    refused = await group(2, "/refused", base=f"http://127.0.0.1:{refused_port}")
    big = await group(2, "/big")
    twodays = await group(1, "/twodays")
    finishing = jitter + ra + gone + moved + slow + refused + big

    # the refused callbacks: start listening after each failed once
    await wait_attempts(stack, refused, 1, 10)
    await stack.listen(refused_port)
    started = time.time()
    await stack.wait_final([r.id for r in finishing], 20)
    await wait_attempts(stack, twodays, len(schedule), 10)
    await wait_attempts(stack, racap, 1, 5)

    records = {r.id: await stack.deliveries(r.id) for r in [*finishing, *racap, *twodays]}
    st = await stack.statuses(list(records))

    # every attempt is recorded: time, status code or error, latency, first 1 KB of the body
    for wid, recs in records.items():
        assert [r["attempt"] for r in recs] == list(range(1, len(recs) + 1)), recs
        for rec in recs:
            assert rec["at"] and rec["eventId"].startswith("evt_") and rec["latencyMs"] >= 0
            assert (rec["statusCode"] is None) != (rec["error"] is None), rec
        assert len({r["eventId"] for r in recs}) == 1, f"{wid}: the event id changed"

    # +-20 % jitter on the schedule
    jitter_gaps = [gaps(records[r.id])[0] for r in jitter]
    lo, hi = schedule[0] * 0.8, schedule[0] * 1.2
    # (attempt times are the worker's clock set to Redis' by round trips: a few ms of play)
    assert all(lo - CLOCK_PLAY_S <= g <= hi + SLACK for g in jitter_gaps), sorted(jitter_gaps)
    assert min(jitter_gaps) < schedule[0] * 0.9 and max(jitter_gaps) > schedule[0] * 1.1, (
        f"no visible jitter: {sorted(jitter_gaps)}"
    )

    # Retry-After on 429 and 503 is waited out
    for r in ra:
        first, second = records[r.id][:2]
        assert first["statusCode"] in (429, 503) and second["statusCode"] == 204
        assert at_s(second) - at_s(first) >= 4 - CLOCK_PLAY_S, records[r.id]
    # ... capped at one hour
    (capped,) = records[racap[0].id]
    due_ms = await stack.db.zscore(c.DELIVERY_SCHEDULE_KEY, racap[0].id)
    assert due_ms is not None and st[racap[0].id] == "delivering"
    wait_s = due_ms / 1000 - at_s(capped)
    assert 3600 - 5 <= wait_s <= 3600 + 5, f"Retry-After: 7200 -> next attempt in {wait_s:.0f} s"

    # 410 disables: one attempt, no more
    for r in gone:
        assert st[r.id] == "disabled" and len(records[r.id]) == 1
        assert records[r.id][0]["statusCode"] == 410

    # 3xx is not followed and is retried
    for r in moved:
        first, second = records[r.id][:2]
        assert first["statusCode"] in (301, 302, 307, 308) and second["statusCode"] == 204
        assert st[r.id] == "delivered"
    assert not [h for h in stack.special_hits if h.path == "/target"], "a redirect was followed"

    # timeouts and refused connections are retried
    for r in slow:
        first, second = records[r.id][:2]
        assert first["error"] == "timeout" and first["statusCode"] is None
        assert 900 <= first["latencyMs"] <= 1600, first
        assert second["statusCode"] == 204
    for r in refused:
        first = records[r.id][0]
        assert first["statusCode"] is None and "connect" in first["error"], first
        assert records[r.id][-1]["statusCode"] == 204 and st[r.id] == "delivered"

    # the first 1 KB of the receiver's answer, and the latency it took
    for r in big:
        first = records[r.id][0]
        assert first["statusCode"] == 500 and first["responseBody"] == long_body[:1024]
        assert first["latencyMs"] >= 300, first

    # a gap longer than arq's 1-day job expiry: held in the delivery zset, nothing expires
    (tw,) = twodays
    recs = records[tw.id]
    assert [r["statusCode"] for r in recs] == [500, 500], recs
    due_ms = await stack.db.zscore(c.DELIVERY_SCHEDULE_KEY, tw.id)
    assert due_ms is not None
    gap = due_ms / 1000 - at_s(recs[-1])
    assert schedule[1] * 0.8 - 1 <= gap <= schedule[1] * 1.2 + 1, gap
    assert gap > ARQ_DAY_S
    event_id = recs[0]["eventId"]
    registration = c.REGISTRATION_KEY.format(tw.id)
    video_id = orjson.loads(await stack.db.get(registration))["videoId"]
    ev = await stack.db.hget(c.WATCH_KEY.format(tw.id), "ev")  # type|at|... (relay.store.codec)
    clips = c.SOURCE_KEY.format(video_id, ev.split("|")[1])
    for key in (c.WATCH_KEY.format(tw.id), registration, clips):
        assert await stack.db.pttl(key) == -1, f"{key} would expire before its next attempt"
    queued = await stack.db.zrange(c.ARQ_QUEUE, 0, -1)
    assert all(job.startswith("expire:") for job in queued), queued  # deliveries: not arq jobs
    # ... two days later (moved forward in the zset): the series runs to its end
    await stack.db.zadd(c.DELIVERY_SCHEDULE_KEY, {tw.id: int(time.time() * 1000)}, xx=True)
    await stack.wait_final([tw.id], 10)
    (_, _, third) = await stack.deliveries(tw.id)
    assert third["statusCode"] == 204 and third["eventId"] == event_id

    await stack.quiesce()
    all_regs = [*finishing, *twodays]
    tally = stack.tally(r.id for r in all_regs)
    final = await stack.statuses([r.id for r in all_regs])
    ok = sum(1 for s in final.values() if s == "delivered")
    report(
        "receivers misbehave",
        due=len(all_regs) - len(gone),
        delivered=ok,
        duplicates=tally.duplicates,
        lost=len(all_regs) - len(gone) - ok,
        recover_s=time.time() - started,
        jitter=f"{min(jitter_gaps) / schedule[0]:.2f}..{max(jitter_gaps) / schedule[0]:.2f}",
        retry_after_cap_s=round(wait_s),
        two_day_gap_h=round(gap / 3600, 1),
    )


async def test_scaled_default_schedule_runs_to_its_end(stack: Stack) -> None:
    """The default RELAY_RETRY_SCHEDULE (27.6 h in all, longer than arq's 1-day job expiry)
    scaled 1:40000: a receiver that always answers 500 gets 8 attempts, then ``failed``."""
    default = (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert sum(default) > ARQ_DAY_S
    scale = 40000
    scaled = [s / scale for s in default]
    await stack.start_api()
    await stack.start_worker(RELAY_RETRY_SCHEDULE=",".join(f"{s:.6f}" for s in scaled))
    stack.receiver.script("/down", [500] * 40)
    regs = await stack.register(await stack.videos(5, timeline=COMPLETED), path="/down")
    started = time.time()
    done = await stack.wait_final([r.id for r in regs], 20)
    await stack.quiesce()
    spans = []
    for r in regs:
        recs = await stack.deliveries(r.id)
        assert [x["attempt"] for x in recs] == list(range(1, len(default) + 2))
        assert all(x["statusCode"] == 500 for x in recs)
        for got, want in zip(gaps(recs), scaled, strict=True):
            assert want * 0.8 - 0.01 <= got <= want * 1.2 + SLACK, (got, want)
        spans.append(at_s(recs[-1]) - at_s(recs[0]))
    st = await stack.statuses([r.id for r in regs])
    assert set(st.values()) == {"failed"}
    receipts = stack.tally(r.id for r in regs).hits_by_id
    report(
        "default schedule 1:40000",
        due=len(regs),
        delivered=len(regs),
        duplicates=0,
        lost=0,
        recover_s=done - started,
        attempts=len(default) + 1,
        span=f"{min(spans) * scale / 3600:.1f}..{max(spans) * scale / 3600:.1f}h(scaled back)",
        receipts=sum(receipts.values()),
    )


async def test_redelivery_of_final_watches(stack: Stack) -> None:
    """POST /redeliver on delivered, failed and disabled watches: same webhook-id, a new
    attempt series, the disabled one enabled again -- and a worker SIGKILLed while the
    redeliveries are on the wire does not lose them."""
    await stack.start_api()
    await stack.start_worker("w", RELAY_RETRY_SCHEDULE="0.2,0.2")
    vids = await stack.videos(9, timeline=COMPLETED)
    stack.receiver.script("/fail", [500] * 9)
    stack.receiver.script("/gone", [410] * 3)
    delivered = await stack.register(vids[:3], path="/ok")
    failed = await stack.register(vids[3:6], path="/fail")
    disabled = await stack.register(vids[6:], path="/gone")
    regs = delivered + failed + disabled
    ids = [r.id for r in regs]
    await stack.wait_final(ids, 15)
    st = await stack.statuses(ids)
    assert [st[i] for i in ids] == ["delivered"] * 3 + ["failed"] * 3 + ["disabled"] * 3
    first_series = {i: await stack.deliveries(i) for i in ids}
    first_ids = stack.tally(ids).ids_by_watch

    # a watch still delivering has nothing to redeliver
    busy = await stack.register([vids[0]], path="/hold")
    stack.receiver.script("/hold", [204], delay=3)
    await wait_until(lambda: stack.has_received([busy[0].id], 1), 10)
    status, body = await stack.redeliver(busy[0].id)
    assert status == 409 and body["status"] == 409, body

    # redeliver all nine; the receiver holds them 1 s and the worker dies meanwhile
    for path in ("/ok", "/fail", "/gone"):
        stack.receiver.script(path, [204] * 3, delay=1.0)
    before = len(stack.receiver.events)
    for i in ids:
        status, body = await stack.redeliver(i)
        assert status == 202 and body["status"] == "delivering", body
    await wait_until(lambda: len(stack.receiver.events) >= before + 3, 10, what="redeliveries")
    killed_at = stack.kill("w")
    # what the dead worker had sent may still sit in the receiver's socket buffers: whatever
    # is recorded shortly after the kill was on the wire at the kill
    await asyncio.sleep(0.3)
    on_the_wire = {e.event["data"]["watchId"] for e in stack.receiver.events[before:]}
    await stack.start_worker("w", RELAY_RETRY_SCHEDULE="0.2,0.2")
    done = await stack.wait_final(ids, 20)
    await stack.quiesce()
    st = await stack.statuses(ids)
    assert set(st.values()) == {"delivered"}, st  # the disabled ones are enabled again
    tally = stack.tally(ids, since=before)  # the redeliveries
    assert tally.lost == 0
    # a second copy only of what was on the wire at the kill
    assert {w for w, s in tally.ids_by_watch.items() if s & set(tally.dup_ids())} <= on_the_wire
    for i in ids:
        assert tally.ids_by_watch[i] == first_ids[i], "redelivery must keep the webhook-id"
        recs = await stack.deliveries(i)
        old = first_series[i]
        new = recs[len(old) :]
        assert recs[: len(old)] == old
        # a new series, its attempts numbered on after the old one's
        assert new and new[0]["attempt"] == old[-1]["attempt"] + 1, f"no new series: {new}"
        assert new[-1]["statusCode"] == 204 and new[0]["eventId"] == old[0]["eventId"]
    report(
        "redeliver + kill -9",
        due=len(ids),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=done - killed_at,
    )


class IgnoredRetryAfterError(AssertionError):
    """A Retry-After the relay did not wait for."""


async def test_retry_after_http_date_is_honoured(stack: Stack) -> None:
    """A 503 with ``Retry-After: <HTTP-date 5 s ahead>``: the next attempt waits for it."""
    await stack.start_api()
    await stack.start_worker(RELAY_RETRY_SCHEDULE="0.3,0.3")

    def later() -> web.Response:
        when = datetime.now(UTC) + timedelta(seconds=5)
        return web.Response(status=503, headers={"Retry-After": format_datetime(when, True)})

    stack.special["/date"] = per_event(later)
    regs = await stack.register(await stack.videos(2, timeline=COMPLETED), path="/date")
    await stack.wait_final([r.id for r in regs], 15)
    waits = []
    for r in regs:
        first, second = (await stack.deliveries(r.id))[:2]
        assert first["statusCode"] == 503 and second["statusCode"] == 204
        waits.append(at_s(second) - at_s(first))
    report(
        "Retry-After HTTP-date",
        due=len(regs),
        delivered=len(regs),
        duplicates=0,
        lost=0,
        recover_s=None,
        waited=f"{min(waits):.1f}..{max(waits):.1f}s(asked>=4)",
    )
    if min(waits) < 4:  # HTTP-dates have whole seconds: at least 4 of the 5 s
        raise IgnoredRetryAfterError(f"waited {waits} s instead of ~5 s")
