"""Crashes: ``kill -9`` of a worker at any moment loses no event.

Each kill is followed by a worker running again; then every watch must reach a final
status, every due event must arrive at least once with one webhook-id per watch, the only
duplicates are deliveries that were on the wire at the kill, and the work the dead worker
held (its leases) is taken up within 30 s.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from relay import constants as c
from relay.settings import Settings
from tests.chaos.harness import Registered, Stack, report, wait_until

TAKEOVER_LIMIT = 30.0  # SPEC: work held by a worker that died is taken up within 30 s
COMPLETED_AT = [{"status": "analyzing", "progress": 40, "after": 0}]


def timeline(done_after: float, final: str = "completed") -> list[dict[str, object]]:
    """Analyzing, then *final* after *done_after* seconds."""
    return [*COMPLETED_AT, {"status": final, "after": done_after}]


@dataclass(slots=True)
class Crash:
    """What one kill left behind and how the stack recovered from it."""

    killed_at: float
    held: dict[tuple[str, str], float]  # schedule members leased or scheduled at the kill
    inflight: set[str]  # watches whose delivery had reached the receiver, not yet recorded
    statuses: dict[str, str | None]  # of the stage's watches right after the kill
    takeover_s: float = 0.0
    recover_s: float = 0.0


async def kill_when(
    stack: Stack,
    worker: str,
    watch_ids: Sequence[str],
    moment: Callable[[], Awaitable[bool]],
    *,
    what: str,
    restart: bool = True,
    timeout: float = 60.0,
    **env: str | None,
) -> Crash:
    """Wait for *moment*, SIGKILL *worker*, start it again (unless not *restart*), then
    measure the takeover of everything it held and the time until every watch is final."""
    await wait_until(moment, 20, interval=0.002, what=f"{what}: the moment to kill")
    killed_at = stack.kill(worker)
    held = await stack.leased()
    statuses = await stack.statuses(watch_ids)
    wanted = set(watch_ids)
    received = {e.event["data"]["watchId"] for e in stack.receiver.events} & wanted
    inflight = {w for w in received if statuses[w] == "delivering"}
    crash = Crash(killed_at, held, inflight, statuses)
    if restart:
        await stack.start_worker(worker, **env)
    took = await wait_until(
        lambda: stack.taken_over(held), TAKEOVER_LIMIT + 10, what=f"{what}: takeover"
    )
    crash.takeover_s = took - killed_at
    crash.recover_s = await stack.wait_final(watch_ids, timeout) - killed_at
    return crash


def check(stack: Stack, name: str, regs: Sequence[Registered], crashes: Sequence[Crash]) -> None:
    """The crash invariants for one scenario; prints its line."""
    ids = [r.id for r in regs]
    tally = stack.tally(ids)
    inflight = set().union(*(cr.inflight for cr in crashes))
    by_id = {i: w for w, s in tally.ids_by_watch.items() for i in s}
    report(
        name,
        due=len(ids),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=max(cr.recover_s for cr in crashes),
        takeover=max(cr.takeover_s for cr in crashes),
        inflight=len(inflight),
        kills=len(crashes),
    )
    assert tally.lost == 0, f"{name}: {tally.lost} events never delivered (logs: {stack.log_dir})"
    assert not tally.multi_id_watches(), "a watch got events with different webhook-ids"
    stray = [i for i in tally.dup_ids() if by_id[i] not in inflight]
    assert not stray, f"{name}: duplicates of events that were not in flight at a kill: {stray}"
    assert tally.duplicates <= len(inflight)
    for cr in crashes:
        assert cr.takeover_s < TAKEOVER_LIMIT, f"{name}: takeover took {cr.takeover_s:.1f} s"


async def test_worker_killed_at_each_stage(stack: Stack) -> None:
    """mid-poll, mid-clip-fetch, mid-fan-out and mid-delivery, 540 watches in all;
    RELAY_LEASE=3 s (delivery and upstream timeouts 2 s)."""
    await stack.start_api()
    await stack.start_worker("w")
    all_regs: list[Registered] = []
    crashes: list[Crash] = []

    # 1. mid-poll: every status request hangs 1.5 s at the simulator; kill while they do
    vids = await stack.videos(60, timeline=timeline(1.0))
    await stack.fault("slow", path="status", delay=1.5, times=len(vids))
    regs = await stack.register(vids * 2)
    since = time.time()

    async def polls_in_flight() -> bool:
        leased = await stack.leased()
        return all((c.POLL_SCHEDULE_KEY, v) in leased for v in vids)

    cr = await kill_when(stack, "w", [r.id for r in regs], polls_in_flight, what="mid-poll")
    answered_late = [e for e in await stack.sim_log(since) if e[0] > cr.killed_at and e[1] == "status"]
    check(stack, "kill -9 mid-poll", regs, [cr])
    assert answered_late, "no status request was in flight at the kill"
    all_regs += regs
    crashes.append(cr)

    # 2. mid-clip-fetch: status answers at once, /clips hangs 1.5 s
    vids = await stack.videos(60, timeline=timeline(0))
    await stack.fault("slow", path="clips", delay=1.5, times=len(vids))
    since = time.time()
    regs = await stack.register(vids * 2)

    async def clips_in_flight() -> bool:
        asked = {e[2] for e in await stack.sim_log(since) if e[1] == "status"}
        leased = await stack.leased()
        return asked >= set(vids) and all((c.POLL_SCHEDULE_KEY, v) in leased for v in vids)

    cr = await kill_when(stack, "w", [r.id for r in regs], clips_in_flight, what="mid-clip-fetch")
    check(stack, "kill -9 mid-clip-fetch", regs, [cr])
    all_regs += regs
    crashes.append(cr)

    # 3. mid-fan-out: 150 videos turn completed together; kill when some of their 300
    #    watches have their event and others not yet
    vids = await stack.videos(150, timeline=timeline(1.5))
    regs = await stack.register(vids * 2)
    ids = [r.id for r in regs]

    async def fanning_out() -> bool:
        st = await stack.statuses(ids)
        waiting = sum(1 for s in st.values() if s == "watching")
        return 5 <= waiting <= len(ids) - 5

    cr = await kill_when(stack, "w", ids, fanning_out, what="mid-fan-out")
    finalized = sum(1 for s in cr.statuses.values() if s != "watching")
    check(stack, "kill -9 mid-fan-out", regs, [cr])
    assert 0 < finalized < len(ids)
    print(f"        fan-out at the kill: {finalized} of {len(ids)} events created")
    all_regs += regs
    crashes.append(cr)

    # 4. mid-delivery: the receiver holds each POST 1.5 s before answering 204
    vids = await stack.videos(60, timeline=timeline(0))
    stack.receiver.script("/slow", [204] * len(vids), delay=1.5)
    regs = await stack.register(vids, path="/slow")
    ids = [r.id for r in regs]

    cr = await kill_when(
        stack, "w", ids, lambda: stack.has_received(ids, len(ids) // 2), what="mid-delivery"
    )
    check(stack, "kill -9 mid-delivery", regs, [cr])
    assert cr.inflight, "no delivery was in flight at the kill"
    all_regs += regs
    crashes.append(cr)

    check(stack, "kill -9 all stages", all_regs, crashes)


async def test_workers_killed_at_random_moments(stack: Stack) -> None:
    """Two workers, one of them SIGKILLed and restarted every 0.5-1.5 s (6 kills) while
    240 watches go through polling, fan-out, flaky deliveries, failures and expiry."""
    rng = random.Random(4)
    await stack.start_api(RELAY_WATCH_TIMEOUT="8")
    await stack.start_worker("w1")
    await stack.start_worker("w2")
    vids: list[str] = []
    for n in range(10):  # completions spread over 0.5 .. 5 s
        vids += await stack.videos(15, timeline=timeline(0.5 + n * 0.5))
    failing = await stack.videos(10, timeline=timeline(2.0, "failed"))
    never = await stack.videos(10, timeline=COMPLETED_AT)  # watch.expired after 8 s
    targets = vids + vids[:50] + failing + never + [f"missing-{n}" for n in range(20)]
    paths = [f"/flaky/{n}" for n in range(3)]
    for n, path in enumerate(paths):  # each path: its own mix of 500s and delays
        codes = [rng.choice([204, 204, 204, 200, 500, 503]) for _ in range(400)]
        stack.receiver.script(path, codes, delay=0.25 * n)
    regs: list[Registered] = []
    for n, path in enumerate(paths):
        regs += await stack.register(targets[n::3], path=path)
    ids = [r.id for r in regs]

    crashes: list[Crash] = []
    started = time.time()
    for n in range(6):
        victim = ("w1", "w2")[n % 2]
        await asyncio.sleep(rng.uniform(0.5, 1.5))  # the random moment itself
        killed_at = stack.kill(victim)
        st = await stack.statuses(ids)
        received = {e.event["data"]["watchId"] for e in stack.receiver.events}
        inflight = {w for w in ids if w in received and st[w] == "delivering"}
        crashes.append(Crash(killed_at, await stack.leased(), inflight, st))
        await stack.start_worker(victim)
    last_kill = crashes[-1].killed_at
    done = await stack.wait_final(ids, 60)
    for cr in crashes:
        cr.recover_s = done - cr.killed_at
        cr.takeover_s = 0.0
    # the takeover after the last kill, measured on what was scheduled or leased then
    took = await wait_until(lambda: stack.taken_over(crashes[-1].held), 5) - last_kill
    crashes[-1].takeover_s = took
    check(stack, "kill -9 random x6", regs, crashes)
    st = await stack.statuses(ids)
    assert set(st.values()) <= {"delivered", "failed"}, st
    print(f"        run took {done - started:.1f} s; final statuses {sorted(set(st.values()))}")


async def test_default_lease_takeover_within_30s(stack: Stack) -> None:
    """With the product's default lease (25 s; delivery 15 s, upstream 10 s), work held by
    a SIGKILLed worker -- polls and deliveries on the wire -- is taken up within 30 s."""
    defaults = Settings()
    assert defaults.lease == 25.0
    product_defaults: dict[str, str | None] = {
        "RELAY_LEASE": None,
        "RELAY_DELIVERY_TIMEOUT": None,
        "RELAY_UPSTREAM_TIMEOUT": None,
    }
    await stack.start_api()
    await stack.start_worker("w1", **product_defaults)
    # 40 deliveries held 8 s by the receiver and 40 status polls held 8 s by the simulator
    done_vids = await stack.videos(40, timeline=timeline(0))
    stack.receiver.script("/slow", [204] * len(done_vids), delay=8)
    deliveries = await stack.register(done_vids, path="/slow")
    await wait_until(
        lambda: stack.has_received([r.id for r in deliveries], 40), 15, what="on the wire"
    )
    slow_vids = await stack.videos(40, timeline=timeline(0))
    await stack.fault("slow", path="status", delay=8, times=len(slow_vids))
    polls = await stack.register(slow_vids)
    regs = deliveries + polls
    ids = [r.id for r in regs]

    async def polls_claimed() -> bool:
        leased = await stack.leased()
        return all((c.POLL_SCHEDULE_KEY, v) in leased for v in slow_vids)

    cr = await kill_when(
        stack, "w1", ids, polls_claimed, what="default lease", timeout=60, **product_defaults
    )
    held = {k: v for k, v in cr.held.items() if v / 1000 > cr.killed_at + 10}
    assert len(held) >= 80, f"the dead worker held {len(held)} members, expected 80"
    check(stack, "kill -9, default lease", regs, [cr])
    assert cr.takeover_s > 10, "taken up before the lease ran out?"
