"""Graceful stops: SIGTERM to a worker finishes its deliveries in flight within
RELAY_SHUTDOWN_GRACE and exits 0; SIGTERM to the API drains (``/readyz`` failing) and exits 0."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from relay import constants as c
from tests.chaos.harness import AUTH, SECRET, Stack, report, wait_until

COMPLETED = [{"status": "completed", "after": 0}]
EXIT_S = 2.5  # after the grace: closing connections and the interpreter's exit


async def test_worker_sigterm_finishes_in_flight_deliveries(stack: Stack) -> None:
    """30 deliveries answered after 1 s finish and are recorded; 5 held 6 s by the receiver
    are cut at the 2 s grace and redelivered by the next worker; work that becomes due after
    the SIGTERM is left to the next worker; exit 0 within the grace."""
    grace = 2.0
    env = {
        "RELAY_SHUTDOWN_GRACE": str(grace),
        "RELAY_DELIVERY_TIMEOUT": "5",
        "RELAY_LEASE": "6",
    }
    await stack.start_api()
    await stack.start_worker("w1", **env)
    quick_vids = await stack.videos(30, timeline=COMPLETED)
    stuck_vids = await stack.videos(5, timeline=COMPLETED)
    stack.receiver.script("/quick", [204] * 30, delay=1.0)
    stack.receiver.script("/stuck", [204] * 5, delay=6.0)
    quick = await stack.register(quick_vids, path="/quick")
    stuck = await stack.register(stuck_vids, path="/stuck")
    in_flight = [r.id for r in quick + stuck]
    await wait_until(lambda: stack.has_received(in_flight, 35), 10, what="35 on the wire")

    proc = stack.procs["w1"]
    sigterm_at = time.time()
    exit_task = asyncio.create_task(stack.terminate("w1", timeout=grace + 10))
    # work that becomes due once it is stopping: the stopping worker must not take it
    await wait_until(lambda: "worker stopping" in proc.log_text(), 5, what="stopping")
    late_vids = await stack.videos(20, timeline=COMPLETED)
    late = await stack.register(late_vids)
    code, took = await exit_task
    assert code == 0, f"worker exited with {code}:\n{proc.log_text()[-2000:]}"
    assert took <= grace + EXIT_S, f"stopping took {took:.2f} s with a {grace} s grace"

    st = await stack.statuses([r.id for r in quick + stuck + late])
    assert all(st[r.id] == "delivered" for r in quick), "in-flight deliveries not recorded"
    assert all(st[r.id] == "delivering" for r in stuck), "cut deliveries must stay due"
    assert all(st[r.id] == "watching" for r in late), "the stopping worker took new work"
    late_polls = [e for e in await stack.sim_log(sigterm_at) if e[2] in set(late_vids)]
    assert not late_polls, f"polled after SIGTERM: {late_polls[:3]}"
    assert "worker stopped" in proc.log_text()

    restarted_at = time.time()
    await stack.start_worker("w2", **env)
    regs = quick + stuck + late
    done = await stack.wait_final([r.id for r in regs], 20)
    await stack.quiesce()
    tally = stack.tally(r.id for r in regs)
    report(
        "SIGTERM worker",
        due=len(regs),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=done - restarted_at,
        exit_code=code,
        stop_s=took,
        grace_s=grace,
    )
    assert tally.lost == 0
    # only the 5 deliveries the grace cut off may arrive twice
    stuck_ids = {i for r in stuck for i in tally.ids_by_watch[r.id]}
    assert set(tally.dup_ids()) <= stuck_ids
    assert not tally.multi_id_watches()


async def test_api_sigterm_drains_in_flight_requests(stack: Stack) -> None:
    """Registrations in flight when the API gets SIGTERM (Redis writes paused 3 s) complete
    with 201 and are whole (a worker then delivers them); meanwhile /readyz answers 503,
    then the port closes; exit 0 within the grace."""
    grace = 8.0
    await stack.start_api(RELAY_SHUTDOWN_GRACE=str(grace))
    proc = stack.procs["api"]
    api = stack.api()
    vids = await stack.videos(10, timeline=COMPLETED)
    await stack.db.execute_command("CLIENT", "PAUSE", "3000", "WRITE")  # type: ignore[no-untyped-call]
    paused_at = time.monotonic()

    async def register(vid: str) -> tuple[int, str]:
        body = {"videoId": vid, "callbackUrl": stack.receiver_url + "/a", "secret": SECRET}
        async with stack.http.post(f"{api}/v1/watches", json=body, headers=AUTH) as resp:
            return resp.status, (await resp.json())["id"] if resp.status == 201 else ""

    posts = [asyncio.create_task(register(v)) for v in vids]
    await asyncio.sleep(0.2)  # the requests reach the API and wait on Redis
    assert not any(p.done() for p in posts)
    exit_task = asyncio.create_task(stack.terminate("api", timeout=grace + 10))

    readyz: list[int | str] = []

    async def probe() -> bool:
        try:
            async with stack.http.get(f"{api}/readyz", timeout=aiohttp.ClientTimeout(2)) as r:
                readyz.append(r.status)
        except aiohttp.ClientConnectionError:
            readyz.append("refused")
        return exit_task.done()

    await wait_until(probe, grace + 10, interval=0.1, what="API exit")
    code, took = await exit_task
    results = await asyncio.gather(*posts)
    with contextlib.suppress(Exception):
        await stack.db.execute_command("CLIENT", "UNPAUSE")  # type: ignore[no-untyped-call]
    drained_after = time.monotonic() - paused_at
    assert code == 0, f"API exited with {code}:\n{proc.log_text()[-2000:]}"
    assert all(status == 201 for status, _ in results), results
    assert took <= grace + EXIT_S, f"stopping took {took:.2f} s with a {grace} s grace"
    assert 200 not in readyz, f"/readyz answered 200 while draining: {readyz}"
    assert 503 in readyz, f"/readyz never said 503 while draining: {readyz}"
    ids = [wid for _, wid in results]
    st = await stack.statuses(ids)
    assert all(s == "watching" for s in st.values()), st
    assert await stack.db.zcard(c.POLL_SCHEDULE_KEY) == len(vids)
    # the watches registered during the drain are complete: a worker delivers them
    await stack.start_worker()
    await stack.wait_final(ids, 15)
    await stack.quiesce()
    tally = stack.tally(ids)
    assert tally.lost == 0 and tally.duplicates == 0
    report(
        "SIGTERM api",
        due=len(ids),
        delivered=tally.delivered,
        duplicates=tally.duplicates,
        lost=tally.lost,
        recover_s=None,
        exit_code=code,
        stop_s=took,
        drained_s=drained_after,
        readyz="/".join(str(x) for x in dict.fromkeys(readyz)),
    )
