"""SIGTERM mid fan-out, with a replacement worker running: the stopping worker records each
outcome as it arrives during RELAY_SHUTDOWN_GRACE, before the claim's lease can run out, so
the replacement sends nothing twice -- exactly one attempt per watch."""

from __future__ import annotations

import asyncio

from tests.chaos.harness import Stack, report, wait_until

COMPLETED = [{"status": "completed", "after": 0}]
WATCHES = 240
# a lane renews a claim before an attempt unless it outlasts RELAY_DELIVERY_TIMEOUT + 1 s:
# here every attempt gets the 1.5 s lease anew; the stopping worker's queue (4 per lane)
# takes ~2 s of its grace, so outcomes held until the end of the grace outlive their lease
ENV = {
    "RELAY_DELIVERY_CONCURRENCY": "16",
    "RELAY_LEASE": "1.5",
    "RELAY_DELIVERY_TIMEOUT": "0.9",
    "RELAY_UPSTREAM_TIMEOUT": "0.9",
    "RELAY_SHUTDOWN_GRACE": "6",
}


async def test_sigterm_mid_fan_out_with_a_replacement_loses_and_doubles_nothing(
    stack: Stack,
) -> None:
    """240 watches on one video, the receiver answering after 0.5 s, 16 lanes: the worker
    doing the fan-out gets SIGTERM once a replacement (64 lanes) is up; every watch is delivered, no
    webhook-id arrives twice, and each watch has exactly one attempt recorded.
    Fails before issue 14: the stopping worker recorded the outcomes of its grace only at
    its end, after their leases had run out; the replacement sent those events again."""
    await stack.start_api()
    await stack.start_worker("w1", **ENV)
    vid = await stack.video(timeline=COMPLETED)
    stack.receiver.script("/slow", [204] * (2 * WATCHES), delay=0.5)
    ids = [r.id for r in await stack.register([vid] * WATCHES, path="/slow")]
    await wait_until(lambda: stack.has_received(ids, 1), 15, interval=0.01, what="fan-out")
    # the replacement has lanes to spare: it takes a lapsed claim up as soon as it is due
    await stack.start_worker("w2", **{**ENV, "RELAY_DELIVERY_CONCURRENCY": "64"})
    sent_before = stack.received(ids)
    assert sent_before < WATCHES - 64, f"the fan-out was over before the SIGTERM: {sent_before}"
    code, took = await stack.terminate("w1", timeout=15)
    assert code == 0, stack.procs["w1"].log_text()[-2000:]
    await stack.wait_final(ids, 60)
    await stack.quiesce()
    tally = stack.tally(ids)
    twice = [i for i, n in tally.hits_by_id.items() if n > 1]
    report(
        "SIGTERM mid fan-out, replaced",
        due=len(ids),
        delivered=tally.delivered,
        duplicates=len(twice),
        lost=tally.lost,
        recover_s=took,
        sent_before=sent_before,
    )
    assert tally.lost == 0
    assert not twice, f"{len(twice)} webhook-ids received twice"
    assert not tally.multi_id_watches()
    counts = await asyncio.gather(*(stack.deliveries(w) for w in ids))
    many = {w: len(rows) for w, rows in zip(ids, counts, strict=True) if len(rows) != 1}
    assert not many, f"{len(many)} watches without exactly one attempt: {list(many.items())[:5]}"
